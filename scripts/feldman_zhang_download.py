"""Download Feldman & Zhang's CIFAR-100 memorization estimates (cifar100_infl_matrix.npz)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

from memplast.cli import entrypoint  # noqa: E402
from memplast.feldman_zhang import download_fz  # noqa: E402


def main(npz: str, url: str):
    """Download URL to NPZ; offline this fails with a message saying where to put the file."""
    download_fz(url, npz)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
