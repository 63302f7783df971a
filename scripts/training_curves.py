"""Join every run's per-epoch training metrics, flag runs with non-finite or diverging loss, and
draw the learning curves of all runs (see memplast/curves.py)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

from memplast import curves as mpcurves  # noqa: E402
from memplast import io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402

log = logging.getLogger("memplast.curves")


def main(metrics: list, curves: str, flags: str, pdf: str, cfg: dict):
    """Write CURVES (every run's epochs), FLAGS (one row per run) and the figure PDF (+ PNG)."""
    table = mpcurves.join_metrics(list(metrics))
    flagged = mpcurves.flag_runs(table)
    prov = io.provenance(cfg, figure=Path(pdf).stem)
    io.write_parquet(table, curves, prov)
    io.write_csv(flagged, flags, prov)
    mpcurves.plot(table, flagged, pdf, prov)
    for row in flagged[flagged["status"] != "ok"].itertuples():
        log.warning("run %s: %s loss in task %s", row.run, row.status, row.task)
    log.info("%d runs, %d flagged", len(flagged), int((flagged["status"] != "ok").sum()))


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
