"""Content checksums of a results tree, for "same tables before and after" checks.

Every output carries its provenance (code version, runtime), so two runs of different commits
never match byte for byte. :func:`content_digest` hashes what a file *says* instead:
- Parquet: the table's data (Arrow IPC of the table with its schema metadata dropped), without
  the wall-clock columns (``TIMING_COLUMNS``);
- checkpoints (``.pt``): every tensor's bytes, dtype and shape, and the other entries except
  ``provenance_json``;
- ``.npz``: every array except ``provenance_json``;
- CSV, YAML, text: the file's bytes (their provenance sits in a ``.prov.json`` sidecar, skipped);
- figures (PDF, PNG, SVG, HTML) and provenance sidecars are skipped: they embed dates and versions.

``python -m memplast.checksums results > before.tsv`` writes one ``path<TAB>digest`` line per
file; ``python -m memplast.checksums --compare before.tsv after.tsv`` lists the differences.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

TIMING_COLUMNS = ("seconds", "images_per_sec")
SKIP_SUFFIXES = {".pdf", ".png", ".svg", ".html", ".log", ".tmp"}


def _hash_obj(h, obj) -> None:
    """Feed a nested checkpoint payload into ``h`` (tensors by their bytes, the rest by repr)."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode() + np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if k == "provenance_json":
                continue
            h.update(f"K{k!r}".encode())
            _hash_obj(h, obj[k])
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _hash_obj(h, v)
    else:
        h.update(repr(obj).encode())


def content_digest(path: Path) -> str | None:
    """SHA-256 of the content of ``path`` without its provenance, or None for a skipped file."""
    if path.suffix in SKIP_SUFFIXES or path.name.endswith(".prov.json"):
        return None
    h = hashlib.sha256()
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        table = table.drop_columns([c for c in TIMING_COLUMNS if c in table.column_names])
        table = table.replace_schema_metadata(None)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h.update(sink.getvalue())
    elif path.suffix == ".pt":
        import torch

        _hash_obj(h, torch.load(path, map_location="cpu", weights_only=False))
    elif path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            for name in sorted(z.files):
                if name != "provenance_json":
                    h.update(name.encode())
                    _hash_obj(h, z[name])
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def digests(root: Path) -> dict[str, str]:
    """``relative path -> digest`` of every non-skipped file under ``root``."""
    out = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        d = content_digest(path)
        if d is not None:
            out[str(path.relative_to(root))] = d
    return out


def compare(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Lines naming every file missing on one side or with other content."""
    lines = [f"only before: {p}" for p in sorted(set(before) - set(after))]
    lines += [f"only after: {p}" for p in sorted(set(after) - set(before))]
    lines += [f"differs: {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return lines


def _read(path: str) -> dict[str, str]:
    return dict(line.split("\t") for line in Path(path).read_text().splitlines() if line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="results", help="tree to checksum (default results)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two checksum files")
    args = parser.parse_args(argv)
    if args.compare:
        diff = compare(_read(args.compare[0]), _read(args.compare[1]))
        print("\n".join(diff) if diff else "identical")
        print(json.dumps({"files": len(_read(args.compare[0])), "differences": len(diff)}))
        return 1 if diff else 0
    for path, digest in digests(Path(args.root)).items():
        print(f"{path}\t{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
