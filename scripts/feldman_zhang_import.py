"""Map Feldman-Zhang tr_mem from TFDS order to our CIFAR-100 sample ids, verified."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

from memplast import io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.feldman_zhang import load_fz_npz, load_mapping, map_fz_scores  # noqa: E402

log = logging.getLogger("memplast.feldman_zhang")


def main(npz: str, mapping: str, samples: str, fz: str, cfg: dict):
    """Write FZ (sample_id, fz_mem) after checking MAPPING is a bijection with matching labels."""
    table = io.read_parquet(samples).query("source == 'train'").set_index("sample_id")
    scores = map_fz_scores(load_fz_npz(npz), load_mapping(mapping), table["orig_label"])
    log.info("Feldman-Zhang scores for %d samples (median %.3f)", len(scores), scores["fz_mem"].median())
    io.write_parquet(scores, fz, io.provenance(cfg, npz=npz, mapping=mapping))


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
