"""Boundary deltas of one run (design §5), joined with the static (and dynamic) memo score."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import pandas as pd  # noqa: E402

from memplast import io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.deltas import boundary_deltas, join_memo, plasticity_export  # noqa: E402


def dynamic_memo(probe_table: pd.DataFrame) -> pd.Series:
    """m_i(t): mean of the probed curvature over task k's before-window (B_k - w, B_k] on the path."""
    before = probe_table[probe_table["role"] == "before"]
    return before.groupby("sample_id")["curv_dyn"].mean().rename("memo_dyn")


def main(probes: list, scores: str, deltas: str, legacy: str, run: dict, score_col: str, cfg: dict):
    """Write DELTAS (Parquet, every boundary) and LEGACY (windowed_plasticity_data.csv)."""
    E, w = cfg["protocol"]["epochs_per_task"], cfg["probes"]["window"]
    memo = io.read_parquet(scores)
    frames = []
    for path in probes:
        table = io.read_parquet(path)
        k = int(table["boundary"].iloc[0])
        d = boundary_deltas(table, (k + 1) * E, w)
        if "curv_dyn" in table:
            d = d.merge(dynamic_memo(table), on="sample_id", how="left")
        frames.append(d)
    out = join_memo(pd.concat(frames, ignore_index=True), memo, score_col)
    out = out.merge(memo.loc[memo["split"] == "train", ["sample_id", "noisy"]], on="sample_id", how="left")
    out.insert(0, "order_seed", int(run["seed"]))
    for factor in ("filter", "ordering", "weighting", "algorithm"):
        out.insert(1, factor, run[factor])
    prov = io.provenance(cfg, run=run, score_col=score_col)
    io.write_parquet(out, deltas, prov)
    io.write_csv(plasticity_export(out, max(cfg["probes"]["taus"])), legacy, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
