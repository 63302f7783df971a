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
from memplast.train import ScorerPaths, train_scorer  # noqa: E402
from memplast.train.scorer import RESUME  # noqa: E402


def main(prepared: str, checkpoints: list, csl: str, metrics: str, grid: list, cfg: dict,
         runtime: dict | None = None, resume: str = RESUME):  # fmt: skip
    """Train the scorer (config memo.scorer) and write CHECKPOINTS at the GRID epochs, CSL and
    METRICS; its resume state is RESUME (saved every protocol.state_every epochs and on SIGTERM)."""
    paths = ScorerPaths(
        checkpoints=dict(zip(grid, checkpoints if isinstance(checkpoints, list) else list(checkpoints))),
        metrics=metrics,
        csl=csl,
        resume=resume,
    )
    train_scorer(load_prepared(prepared), cfg, paths, io.provenance(cfg), runtime_of(cfg, runtime))


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
