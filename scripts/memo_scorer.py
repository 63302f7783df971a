"""Train the memorization scorer on all training samples; save its epoch-grid checkpoints and CSL."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

from memplast import io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.runtime import resolve as runtime_of  # noqa: E402
from memplast.train import train_scorer  # noqa: E402


def main(prepared: str, checkpoints: list, csl: str, metrics: str, grid: list, cfg: dict, runtime: dict | None = None):
    """Train the scorer (config memo.scorer) and write CHECKPOINTS at the GRID epochs."""
    paths = dict(zip(grid, checkpoints if isinstance(checkpoints, list) else list(checkpoints)))
    memo, rt = cfg["memo"], runtime_of(cfg, runtime)
    train_scorer(
        load_prepared(prepared),
        memo["scorer"],
        cfg["dataset"]["augmentation"],
        paths,
        metrics,
        csl,
        rt["device"],
        memo["seed"],
        io.provenance(cfg),
        rt["eval_batch_size"],
    )


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
