"""Download an official CIFAR archive with torchvision and verify its md5."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

from memplast.cli import entrypoint  # noqa: E402
from memplast.data import download_cifar  # noqa: E402


def main(dataset: str, archive: str, url: str | None = None, md5: str | None = None):
    """Download CIFAR-10/100 into ARCHIVE (checksum verified)."""
    download_cifar(dataset, archive, url=url, md5=md5)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
