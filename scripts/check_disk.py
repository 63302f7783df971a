"""Stop before installing .venv when the disk cannot hold it (run by `make` with the system Python).

The venv takes 6.7 GB on x86_64 (torch's CUDA build) and pip unpacks its wheels in the temporary
directory on top; a full disk would otherwise end the install half-way with pip's `[Errno 28]`.
"""

import argparse
import shutil
import sys
import tempfile


def shortfall(need_gb: float, paths) -> str | None:
    """The first of ``paths`` with less than ``need_gb`` GB free, as "X GB free in PATH", else None."""
    for path in paths:
        free = shutil.disk_usage(path).free / 2**30
        if free < need_gb:
            return f"{free:.1f} GB free in {path}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--need-gb", type=float, default=8.0, help="GB needed free (default 8)")
    args = ap.parse_args(argv)
    short = shortfall(args.need_gb, [".", tempfile.gettempdir()])
    if short:
        sys.exit(
            f"installing .venv needs about {args.need_gb:g} GB free on disk but found {short}; "
            "free some space (or set TMPDIR to a larger disk) and run make again"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
