"""Generate the rehearsal's CIFAR-100 archive in the official format (config dataset.generated)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

from memplast.cli import entrypoint  # noqa: E402
from memplast.data import DataError, md5sum, write_cifar100_archive  # noqa: E402

log = logging.getLogger("memplast.generate_archive")


def main(archive: str, generated: dict | None):
    """Write a seeded class-structured CIFAR-100-format archive to ARCHIVE and log its md5."""
    if not generated:
        raise DataError("dataset.generated is null, so there is no archive to generate; set it (config/rehearsal.yaml)")
    log.info(
        "generating a CIFAR-100-format archive: %d train + %d test images per class, seed %d, noise %g",
        generated["train_per_class"],
        generated["test_per_class"],
        generated["seed"],
        generated["noise"],
    )
    write_cifar100_archive(archive, **generated)
    log.info("wrote %s, md5 %s (dataset.md5 must match it)", archive, md5sum(archive))


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
