"""Reading and writing the workflow's files, each stamped with its provenance.

Every output records the config slice and the code version that made it:
Parquet in its schema metadata, CSV in a JSON sidecar (``<file>.prov.json``, so the CSV
stays plain for the user's existing scripts), figures in the metadata of the PDF and of the PNG
beside it, checkpoints in a key.
All writers are atomic: they write a temporary file and rename it, so a failed job
never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from memplast import __version__

PROV_KEY = b"memplast"
_UMASK = os.umask(0)
os.umask(_UMASK)


@functools.cache
def code_version() -> str:
    """Package version plus git commit of the checkout (``+dirty`` when modified)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "memplast",
                "scripts",
                "rules",
                "Snakefile",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"{__version__}+unknown"


# Facts about the process that made an output but are not part of the science: the torch
# intra-op thread count the entry point set (memplast.cli), the device, library versions.
# They go into every provenance record under "runtime" and are left out of resume keys.
RUNTIME: dict = {}


def runtime() -> dict:
    """The runtime facts of this process (threads, device, torch version when torch is loaded)."""
    facts = dict(RUNTIME)
    torch = sys.modules.get("torch")
    if torch is not None:
        facts.setdefault("threads", torch.get_num_threads())
        facts["torch"] = torch.__version__
    return facts


def provenance(config_slice: dict | None = None, **extra) -> dict:
    """The record every output carries: code version, the config slice, extra facts and runtime."""
    record = {"code_version": code_version(), "config": config_slice or {}}
    record.update(extra)
    record["runtime"] = runtime()
    return record


def science_key(prov: dict) -> str:
    """``prov`` without its runtime facts, as canonical JSON: what decides whether a resume fits."""
    return json.dumps({k: v for k, v in prov.items() if k != "runtime"}, sort_keys=True, default=str)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def move_file(src, dst, verify=None) -> None:
    """Move ``src`` onto ``dst`` atomically, on one filesystem or across two: a rename where it can,
    else (``EXDEV``) a copy to a temporary file next to ``dst``, ``verify(tmp)`` on the copy, a
    rename on the destination's filesystem and the removal of ``src``."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        if verify is not None:
            verify(tmp)
    os.unlink(src)


def write_parquet(df: pd.DataFrame, path, prov: dict) -> None:
    """Write ``df`` as Parquet with ``prov`` in the schema metadata under ``memplast``."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROV_KEY] = json.dumps(prov, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path, columns=None) -> pd.DataFrame:
    return pd.read_parquet(path, columns=columns)


def read_provenance(path) -> dict:
    """The provenance record of a workflow output (Parquet, CSV, checkpoint, npz, figure PDF or PNG)."""
    path = Path(path)
    if path.suffix == ".parquet":
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[PROV_KEY])
    if path.suffix == ".csv":
        return json.loads(Path(f"{path}.prov.json").read_text())
    if path.suffix == ".pt":
        from memplast.checkpoints import load_payload  # verified: a damaged file is named

        return json.loads(load_payload(path)["provenance_json"])
    if path.suffix == ".npz":
        import numpy as np

        from memplast.integrity import check_archive

        check_archive(path)
        with np.load(path) as z:
            return json.loads(str(z["provenance_json"]))
    if path.suffix in (".pdf", ".png"):
        return read_figure_provenance(path)
    raise ValueError(f"no provenance reader for {path}")


def read_figure_provenance(path) -> dict:
    """The provenance of a figure: the JSON that ``memplast.plots.save`` put in the ``Description``
    of the PNG written beside each PDF (the PDF's ``Subject`` holds the same)."""
    from PIL import Image

    png = Path(path).with_suffix(".png")
    with Image.open(png) as im:
        text = im.text.get("Description")
    if text is None:
        raise ValueError(f"{png}: no Description in the PNG metadata; was it written by memplast.plots.save?")
    return json.loads(text)


def write_csv(df: pd.DataFrame, path, prov: dict) -> None:
    """Write a plain CSV plus its provenance sidecar ``<path>.prov.json``."""
    with atomic_path(f"{path}.prov.json") as tmp:
        Path(tmp).write_text(json.dumps(prov, indent=1, default=str))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
