"""Run a script's ``main(...)`` from Snakemake's ``script:`` directive or from the command line.

Every script in ``scripts/`` ends with ``entrypoint(main, globals().get("snakemake"))``.
Under Snakemake, named inputs, outputs and params become keyword arguments, the log goes
to ``log[0]`` and torch uses the rule's ``threads``. From a shell, each parameter of ``main`` is a
``--name VALUE`` flag whose value is parsed as YAML (numbers, lists and dicts work), and
``--threads N`` (default 1, the demo's and every light rule's ``threads``) sets torch's threads.
Either way the thread count is set explicitly (never left to ``OMP_NUM_THREADS`` or the core
count: CPU reductions depend on it) and recorded in the provenance of every output::

    python scripts/prepare.py --dataset_cfg '{name: digits}' --prepared data/digits/prepared.npz ...

Or the workflow's own job for one output, with everything Snakemake would pass (input, output,
params, log, threads, resources, wildcards, config), from the Snakefile and its config files::

    python scripts/subset.py --target results/subsets/none/kept.parquet --configfile config.yaml config/demo.yaml
    python scripts/subset.py --rule subset --wildcards filter=none --configfile config.yaml config/demo.yaml
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path

import yaml

from memplast import runtime
from memplast.integrity import OneLineError

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


ROOT = Path(__file__).resolve().parent.parent


class JobError(RuntimeError):
    """The workflow has no job for the requested output (or rule and wildcards); the message names the cause."""


def _job_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--target", help="an output path of the workflow: run the job that makes it")
    which.add_argument("--rule", help="a rule name (with --wildcards): run that rule's job")
    p.add_argument("--wildcards", nargs="*", default=[], metavar="NAME=VALUE")
    p.add_argument("--configfile", nargs="+", default=[], type=Path, help="config overlays, as for snakemake")
    p.add_argument("--snakefile", type=Path, default=ROOT / "Snakefile")
    return p


def workflow_job(script: str, target=None, rule=None, wildcards=(), configfiles=(), snakefile=ROOT / "Snakefile"):
    """The Snakemake object the rule's ``script:`` directive would receive for the job that makes
    ``target`` (or the job of ``rule`` with ``wildcards``): the workflow is loaded from
    ``snakefile`` with its ``configfile:`` and the ``configfiles`` overlays, working directory the
    current one, and the job is built by Snakemake's own DAG (``DAG.new_job``), so its input, output,
    params, log, threads, resources and wildcards are exactly what Snakemake would pass. Threads are
    capped at the machine's cores (as ``snakemake --cores all``). Raises :class:`JobError`."""
    from snakemake.api import SnakemakeApi
    from snakemake.exceptions import RuleException, WorkflowError
    from snakemake.iocontainers import Snakemake
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings

    from memplast.config import read_yaml
    from memplast.grid import ConfigError

    try:
        wc = dict(w.split("=", 1) for w in wildcards)
    except ValueError:
        raise JobError(f"--wildcards {' '.join(wildcards)}: give NAME=VALUE pairs") from None
    for path in (*configfiles, snakefile):
        if not Path(path).is_file():
            raise JobError(f"{path}: no such file")
    for path in configfiles:
        try:
            read_yaml(path)
        except ConfigError as exc:  # a YAML syntax error: file, line and column
            raise JobError(str(exc)) from None
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        try:
            wapi = api.workflow(
                resource_settings=ResourceSettings(cores=os.cpu_count() or 1),
                config_settings=ConfigSettings(configfiles=[p.resolve() for p in configfiles]),
                snakefile=Path(snakefile).resolve(),
                workdir=Path.cwd(),
            )
            wapi.dag(DAGSettings(targets={target} if target else set()))
            wf = wapi._workflow  # the loaded workflow (the API has no public accessor)
            wf._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True, nolock=True)
            if rule is not None:  # the rule's first output with the wildcards: the job's target
                names = wf.get_rule(rule).wildcard_names
                if set(wc) != names:
                    raise JobError(
                        f"rule {rule} has wildcards {sorted(names)}, given {sorted(wc)}; give NAME=VALUE for each"
                    )
                target = wf.get_rule(rule).get_some_product().apply_wildcards(wc)
            producers = [r for r in wf.rules if r.is_producer(target) and r.name == (rule or r.name)]
            # a ruleorder picks among them as in Snakemake's DAG (rules/probe.smk: probe or probe_run)
            producers = [r for r in producers if not any(other > r for other in producers)]
            if len(producers) != 1:
                names = ", ".join(r.name for r in producers)
                raise JobError(
                    f"no rule of {snakefile} makes {target}; check the path (and wildcards) against the rules' outputs"
                    if not producers
                    else f"{target} is made by several rules ({names}); use --rule and --wildcards"
                )
            job = wf.async_run(wf.dag.new_job(producers[0], targetfile=target))
            if Path(job.rule.script or "").name != Path(script).name:
                expected = f"scripts/{Path(job.rule.script or '?').name}"
                raise JobError(
                    f"rule {job.rule.name} runs {expected}, not {Path(script).name}; run that script instead"
                )
            missing = [f for f in job.input._plainstrings() if not os.path.exists(f)]
            if missing:
                raise JobError(f"rule {job.rule.name} needs {missing[0]}, which does not exist; make it first")
            return Snakemake(
                job.input, job.output, job.params, job.wildcards, job.threads, job.resources, job.log,
                wf.config, job.rule.name, None, str(Path(script).resolve().parent),
            )  # fmt: skip
        except (WorkflowError, RuleException, ConfigError) as exc:  # unknown rule, bad wildcards, bad config, ...
            raise JobError(" ".join(str(exc).split()) or type(exc).__name__) from None


def _job_from_argv(main, argv) -> object | None:
    """The workflow's job when argv asks for one (--target or --rule), else None (the --name VALUE form)."""
    args, rest = _job_parser().parse_known_args(argv)
    if args.target is None and args.rule is None:
        return None
    script = getattr(sys.modules.get(main.__module__), "__file__", None) or main.__module__
    if rest:
        raise JobError(f"with --target or --rule, the job's arguments come from the workflow; drop {' '.join(rest)}")
    smk = workflow_job(script, args.target, args.rule, args.wildcards, args.configfile, args.snakefile)
    for path in smk.log:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return smk


def entrypoint(main, smk=None) -> None:
    """Call ``main`` with arguments taken from the Snakemake object ``smk`` or from argv: either the
    workflow's own job (``--target PATH`` or ``--rule NAME --wildcards K=V ..``, see :func:`workflow_job`)
    or one ``--name VALUE`` flag per parameter of ``main``."""
    accepted = inspect.signature(main).parameters
    if smk is None:
        try:
            smk = _job_from_argv(main, sys.argv[1:])
        except JobError as exc:  # one line naming the cause, no traceback
            raise SystemExit(f"{Path(sys.argv[0]).name}: {exc}") from None
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

        jobs_per_gpu = int(smk.config.get("resources", {}).get("jobs_per_gpu", 1))
        gpu_slots.assign(int(dict(smk.resources.items()).get("gpu", 0) or 0), job, jobs_per_gpu=jobs_per_gpu)
    else:
        setup_logging(None)
        parser = argparse.ArgumentParser(
            description=(main.__doc__ or "").strip().splitlines()[0],
            epilog="Or run the workflow's own job for one output: --target PATH [--configfile FILE ..], "
            "or --rule NAME --wildcards NAME=VALUE .. [--configfile FILE ..].",
        )
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
    except OneLineError as exc:  # a damaged file, a task held by another trainer: cause and recovery
        log.error("failed %s: %s", job, exc)
        raise SystemExit(1) from None
    except Exception:
        log.exception("failed %s", job)
        raise
    log.info("done %s in %.1f s, %.2f CPU s", job, time.perf_counter() - t0, process_cpu_seconds())


def process_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process since it started, its imports included, and of
    its waited-for children: a job's exact CPU time, logged by :func:`entrypoint` when the job ends.
    (Snakemake's benchmark ``cpu_time`` is a sample: every 0.5 s for the first ~15 s of a job, then
    every 30 s, so it misses up to 30 s of a job's last CPU time; benchmarks/bench_cost_model.py
    reads this line instead.)"""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
