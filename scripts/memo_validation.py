"""Do the memorization scores mean something? Agreement between methods, label-noise AUROC, figure."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

import pandas as pd  # noqa: E402

from memplast import dependence, io, memo_validation, plots  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.data import load_prepared  # noqa: E402

log = logging.getLogger("memplast.memo_validation")
METHOD_COLUMNS = ["curv_exact", "curv_hutch", "curv_fd", "csl", "fz_mem"]


def main(
    scores: str,
    prepared: str,
    heldout_dependence: str,
    agreement: str,
    auroc: str,
    proxy_auroc: str,
    pdf: str,
    png: str,
    cfg: dict,
):
    """Write AGREEMENT (Spearman/Pearson/cosine between methods), AUROC (planted noise), PROXY_AUROC
    (the held-out neighbour proxy on planted near-duplicates of mislabelled samples) and the figure."""
    table = io.read_parquet(scores)
    train = table[table["split"] == "train"]
    columns = [c for c in METHOD_COLUMNS if c in train and train[c].notna().any()]
    agree = [memo_validation.method_agreement(train, columns)]
    if "fz_mem" in columns:
        top = memo_validation.top_k_mask(train, "fz_mem", min(5000, len(train)))
        agree.append(memo_validation.method_agreement(train, columns, subset=top, subset_name="top5k_fz"))
    agree = pd.concat(agree, ignore_index=True)
    noise = (
        memo_validation.noise_auroc(train, columns)
        if train["noisy"].any()
        else pd.DataFrame(columns=["method", "auroc", "n_noisy"])
    )
    proxy = dependence.proxy_auroc(io.read_parquet(heldout_dependence))
    for row in proxy.itertuples():
        log.info("held-out proxy %s: AUROC %.3f for %d planted near-duplicates among %d test samples "
                 "(flagged memo-dependent: %.2f of them, %.2f of the others)",
                 row.score, row.auroc, row.n_planted, row.n, row.planted_dependent, row.others_dependent)  # fmt: skip
    prov = io.provenance(cfg)
    io.write_csv(agree, agreement, prov)
    io.write_csv(noise, auroc, prov)
    io.write_csv(proxy, proxy_auroc, prov)
    data = load_prepared(prepared)
    top_ids = train.nlargest(16, "memo")["sample_id"]
    rows = data.rows_of(top_ids, "train")
    images = {int(i): data.images[r] for i, r in zip(top_ids, rows)}
    plots.memo_validation(train, agree, noise, images, pdf, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
