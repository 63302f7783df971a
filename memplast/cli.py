"""Run a script's ``main(...)`` from Snakemake's ``script:`` directive or from the command line.

Every script in ``scripts/`` ends with ``entrypoint(main, globals().get("snakemake"))``.
Under Snakemake, named inputs, outputs and params become keyword arguments, the log goes
to ``log[0]`` and torch uses the rule's ``threads``. From a shell, each parameter of ``main`` is a
``--name VALUE`` flag whose value is parsed as YAML (numbers, lists and dicts work), and
``--threads N`` (default 1, the demo's and every light rule's ``threads``) sets torch's threads.
Either way the thread count is set explicitly (never left to ``OMP_NUM_THREADS`` or the core
count: CPU reductions depend on it) and recorded in the provenance of every output::

    python scripts/prepare.py --dataset_cfg '{name: digits}' --prepared data/digits/prepared.npz ...
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import time

import yaml

from memplast import runtime

log = logging.getLogger("memplast")


def setup_logging(logfile: str | None = None) -> None:
    handlers = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile, mode="w"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


def _snakemake_kwargs(smk) -> dict:
    kwargs = {}
    for section in (smk.input, smk.output, smk.params):
        for name, value in section.items():
            if name in kwargs:
                raise RuntimeError(f"rule {smk.rule}: name {name!r} used twice among input/output/params")
            kwargs[name] = value
    return kwargs


def _runtime(smk) -> dict:
    """Runtime settings from the config (not from params: they must not trigger reruns), after
    stopping a job that requested a GPU it cannot see."""
    settings = runtime.settings(smk.config)
    gpu = int(smk.resources.get("gpu", 0) or 0)
    runtime.check_gpu(f"rule {smk.rule}", runtime.RULE_FAMILY.get(smk.rule), gpu, settings["device"])
    return settings


def _parse(value: str):
    """A command-line value: JSON if it parses (exact numbers), else YAML (lists, dicts, strings)."""
    try:
        return json.loads(value)
    except ValueError:
        return yaml.safe_load(value)


DEFAULT_THREADS = 1


def set_threads(n) -> int:
    """Set torch's intra-op threads to ``n`` (when torch is used) and record it for provenance."""
    from memplast import io

    n = int(n)
    if n < 1:
        raise ValueError(f"threads={n}: give a positive thread count (--threads N or the rule's threads)")
    io.RUNTIME["threads"] = n
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:  # torch imported later (lazily) reads its thread count from here
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def entrypoint(main, smk=None) -> None:
    """Call ``main`` with arguments taken from the Snakemake object ``smk`` or from argv."""
    accepted = inspect.signature(main).parameters
    if smk is not None:
        setup_logging(smk.log[0] if smk.log else None)
        kwargs = _snakemake_kwargs(smk)
        try:
            kwargs["runtime"] = _runtime(smk)
        except runtime.NoGPUError as exc:  # one line naming the fix, no traceback
            log.error("%s", exc)
            raise SystemExit(1) from None
        threads = smk.threads
        job = f"{smk.rule} {dict(smk.wildcards.items())}"
        from memplast import gpu_slots  # a GPU of its own on a multi-GPU machine (no torch import)

        gpu_slots.assign(int(dict(smk.resources.items()).get("gpu", 0) or 0), job)
    else:
        setup_logging(None)
        parser = argparse.ArgumentParser(description=(main.__doc__ or "").strip().splitlines()[0])
        for name, p in accepted.items():
            if name == "threads":
                continue
            parser.add_argument(
                f"--{name}",
                type=_parse,
                required=p.default is inspect._empty,
                default=None if p.default is inspect._empty else p.default,
            )
        parser.add_argument(
            "--threads",
            type=int,
            default=DEFAULT_THREADS,
            help=f"torch intra-op threads (default {DEFAULT_THREADS}, as the rules)",
        )
        kwargs = vars(parser.parse_args())
        threads = kwargs.pop("threads")
        job = main.__module__
    threads = set_threads(threads)
    if "threads" in accepted:
        kwargs["threads"] = threads
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    t0 = time.perf_counter()
    log.info("start %s with %d thread(s)", job, threads)
    try:
        main(**kwargs)
    except Exception:
        log.exception("failed %s", job)
        raise
    log.info("done %s in %.1f s", job, time.perf_counter() - t0)
