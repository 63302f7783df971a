"""Draw one figure of results/figures (the rule's output name says which)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import pandas as pd  # noqa: E402

from memplast import io, plots, plots_headline  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402


def _csvs(paths):
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def main(
    pdf: str,
    png: str,
    cfg: dict,
    outcome: str | None = None,
    per_boundary: str | None = None,
    pooled: str | None = None,
    deciles: str | None = None,
    deltas: str | None = None,
    summary: str | None = None,
    balance: list | None = None,
    diagnostics: list | None = None,
):
    """Write PDF (and PNG beside it) for the figure named by PDF's file name."""
    name = Path(pdf).stem
    prov = io.provenance(cfg, figure=name)
    if name.startswith("memo_vs_"):
        plots_headline.memo_vs_outcome(
            pd.read_csv(per_boundary),
            pd.read_csv(pooled),
            io.read_parquet(deltas),
            pd.read_csv(deciles),
            outcome,
            pdf,
            prov,
            float(cfg.get("ci_level", 0.95)),
        )
    elif name == "accuracy_curves":
        plots.accuracy_curves(io.read_parquet(summary), pdf, prov)
    elif name == "dormant_and_rank":
        plots.dormant_and_rank(io.read_parquet(summary), pdf, prov)
    elif name == "class_balance":
        plots.class_balance(_csvs(balance), pdf, prov)
    elif name == "order_diagnostics":
        plots.order_diagnostics(_csvs(diagnostics), pdf, prov)
    else:
        raise ValueError(f"no figure named {name!r}")


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
