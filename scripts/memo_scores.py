"""Average curvature over the scorer's epoch grid into the static memo scores table."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from memplast import io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402

log = logging.getLogger("memplast.memo")


def average_over_grid(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean of every score column per (sample_id, split) over checkpoints; a standard error
    column (suffix _se) combines as sqrt(sum se^2) / K, the s.e. of the mean of K estimates."""
    cat = pd.concat(tables, ignore_index=True)
    k = cat["epoch"].nunique()
    value_cols = [c for c in cat.columns if c not in ("sample_id", "split", "epoch")]
    se_cols = [c for c in value_cols if c.endswith("_se")]
    out = cat.groupby(["sample_id", "split"], sort=True)[[c for c in value_cols if c not in se_cols]].mean()
    for c in se_cols:
        out[c] = np.sqrt((cat[c] ** 2).groupby([cat["sample_id"], cat["split"]]).sum()) / k
    return out.reset_index().assign(n_checkpoints=k)


def add_percentiles(scores: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Rank percentile (0..100] of each score within its split, overall and within class."""
    for c in columns:
        scores[f"{c}_pct"] = scores.groupby("split")[c].rank(pct=True) * 100
        scores[f"{c}_pct_class"] = scores.groupby(["split", "label"])[c].rank(pct=True) * 100
    return scores


def main(
    samples: str,
    curvature: list,
    csl: str,
    scores: str,
    class_map: str,
    score_col: str,
    cfg: dict,
    fz: str | None = None,
):
    """Write SCORES (every method, percentiles) and CLASS_MAP (the user's sample_class_map.csv)."""
    grid = average_over_grid([io.read_parquet(p) for p in curvature])
    meta = io.read_parquet(samples)[["sample_id", "split", "label", "orig_label", "noisy"]]
    table = meta.merge(grid, on=["sample_id", "split"], how="inner")
    table = table.merge(io.read_parquet(csl), on="sample_id", how="left")  # train samples only
    table.loc[table["split"] != "train", "csl"] = np.nan
    if fz is not None:
        table = table.merge(io.read_parquet(fz), on="sample_id", how="left")
        table.loc[table["split"] != "train", "fz_mem"] = np.nan
    if score_col not in table:
        raise ValueError(f"memo.score column {score_col!r} was not computed; add its method to memo.methods")
    score_cols = [
        c for c in table.columns if c.startswith(("curv_", "trH_", "csl", "fz_mem")) and not c.endswith("_se")
    ]
    table = add_percentiles(table, score_cols)
    table["memo"] = table[score_col]
    log.info(
        "scores for %d samples (%s) from %d checkpoints; memo = %s (median %.4g, max %.4g)",
        len(table),
        table["split"].value_counts().to_dict(),
        int(grid["n_checkpoints"].iloc[0]),
        score_col,
        table["memo"].median(),
        table["memo"].max(),
    )
    prov = io.provenance(cfg, score_col=score_col, checkpoints=len(curvature))
    io.write_parquet(table, scores, prov)
    train = table[table["split"] == "train"]
    io.write_csv(
        pd.DataFrame(
            {"sample_id": train["sample_id"], "class_label": train["label"], "memorization_score": train[score_col]}
        ),
        class_map,
        prov,
    )


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
