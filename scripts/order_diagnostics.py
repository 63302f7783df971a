"""Memo along an ordering's epoch order (last task, first class order, primary filter)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from memplast import io, orderings  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.device import stable_seed  # noqa: E402
from memplast.grid import task_classes  # noqa: E402


def main(
    prepared: str,
    order: str,
    kept: str,
    scores: str,
    diagnostics: str,
    gaps: str,
    ordering: str,
    score_col: str,
    cfg: dict,
):
    """Write DIAGNOSTICS (per position) and GAPS (high-memo gap summary) for ORDERING."""
    data = load_prepared(prepared)
    proto = cfg["protocol"]
    seen = task_classes(pd.read_csv(order)["class"].to_numpy(), proto["n_tasks"] - 1, proto["classes_per_task"])
    rows = (
        (data.split == "train")
        & np.isin(data.labels, seen)
        & np.isin(data.sample_id, io.read_parquet(kept)["sample_id"])
    )
    ids = data.sample_id[rows]
    table = io.read_parquet(scores).query("split == 'train'").set_index("sample_id")
    memo = table[score_col]
    # Feldman-Zhang's self-influence (memorization) estimate next to memo, where that data is present
    influence = table["fz_mem"] if "fz_mem" in table and table["fz_mem"].loc[ids].notna().all() else None
    file_ids = pd.read_csv(cfg["ordering"]["file"])["sample_id"].to_numpy() if ordering == "file" else None
    generator = torch.Generator().manual_seed(stable_seed("diagnostics", ordering))
    base = orderings.base_order(ordering, ids, memo.loc[ids].to_numpy(), generator, cfg["ordering"]["strata"], file_ids)
    epoch = orderings.epoch_order(base, ids, generator, cfg["ordering"]["block_size"])
    diag = orderings.order_diagnostics(epoch, memo, influence_of=influence, batch_size=proto["batch_size"]).assign(
        ordering=ordering
    )
    prov = io.provenance(cfg, ordering=ordering, score_col=score_col)
    io.write_csv(diag, diagnostics, prov)
    io.write_csv(pd.DataFrame([{"ordering": ordering, **orderings.gap_summary(diag)}]), gaps, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
