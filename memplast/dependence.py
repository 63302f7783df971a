"""Which held-out samples depend on memorized training samples (design §6, "Held-out samples").

Two definitions, one row per held-out (validation or test) sample in
``results/memo/heldout_dependence.parquet``:

1. *Neighbour proxy* (always available): in the memorization scorer's penultimate features (its
   last checkpoint, eval-mode BN), the ``k`` nearest training samples of the held-out sample's own
   class by cosine similarity. ``nn_memo_pct`` = memo percentile within class of the nearest one
   (the continuous dependence score), ``knn_memo_pct`` = its mean over the k nearest;
   ``dependent_proxy`` = nn_memo_pct >= 100 * memo_quantile.
2. *Influence* (with ``memo.feldman_zhang.enabled``): Feldman & Zhang (2020) estimate the
   influence infl(i, j) of training sample i on test sample j (within a class). The top pair of
   test sample j is argmax_i infl(i, j); ``dependent_influence`` = that influence >=
   ``influence_min`` and the training sample's memo percentile within class >= 100 * memo_quantile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memplast.data import DataError


def penultimate_features(model, images, batch_size: int, device) -> np.ndarray:
    """Unit-norm penultimate features h(x) / ||h(x)|| of normalized ``images`` (eval-mode BN)."""
    import torch

    from memplast.models import eval_mode

    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(images), batch_size):
            h = model(images[start : start + batch_size].to(device), return_acts=True).features
            out.append(torch.nn.functional.normalize(h.double(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def neighbour_dependence(
    train_feats: np.ndarray,
    train: pd.DataFrame,
    held_feats: np.ndarray,
    held: pd.DataFrame,
    k: int,
    memo_quantile: float,
) -> pd.DataFrame:
    """The neighbour proxy for every row of ``held`` (columns split, sample_id, label) from unit-norm
    features; ``train`` has sample_id, label, memo_pct_class (aligned with ``train_feats``).
    Adds nn_sample_id, nn_cosine, nn_memo_pct, knn_memo_pct, dependent_proxy."""
    out = held[["split", "sample_id", "label"]].reset_index(drop=True).copy()
    cols = {c: np.full(len(out), np.nan) for c in ("nn_sample_id", "nn_cosine", "nn_memo_pct", "knn_memo_pct")}
    t_label = train["label"].to_numpy()
    for c in np.unique(out["label"]):
        pool = np.flatnonzero(t_label == c)
        rows = np.flatnonzero(out["label"].to_numpy() == c)
        if len(pool) == 0:
            raise DataError(f"class {c}: no training sample to find held-out neighbours among")
        sim = held_feats[rows] @ train_feats[pool].T
        kk = min(k, len(pool))
        # stable ordering: ties broken by the training sample's position
        near = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
        pct = train["memo_pct_class"].to_numpy()[pool][near]
        cols["nn_sample_id"][rows] = train["sample_id"].to_numpy()[pool][near[:, 0]]
        cols["nn_cosine"][rows] = np.take_along_axis(sim, near[:, :1], 1)[:, 0]
        cols["nn_memo_pct"][rows] = pct[:, 0]
        cols["knn_memo_pct"][rows] = pct.mean(1)
    out = out.assign(**cols)
    out["nn_sample_id"] = out["nn_sample_id"].astype(np.int64)
    out["dependent_proxy"] = out["nn_memo_pct"] >= 100 * memo_quantile
    return out


# --------------------------------------------------------------------------- Feldman-Zhang influence
def load_fz_influence(path, train_map: pd.Series, test_map: pd.Series | None) -> pd.DataFrame:
    """The top influence pair of every test sample from FZ's ``cifar100_infl_matrix.npz``: per class c,
    ``infl_matrix_class{c}`` (train x test of the class), ``tr_classidx_{c}`` / ``tt_classidx_{c}``
    (their TFDS positions). ``train_map`` / ``test_map``: TFDS position -> our sample id (index ->
    value; ``test_map`` None: the same order). Returns test_id, fz_top_train_id, fz_top_influence."""
    rows = []
    with np.load(path, allow_pickle=False) as z:
        classes = sorted(int(k.removeprefix("infl_matrix_class")) for k in z.files if k.startswith("infl_matrix_class"))
        if not classes:
            raise DataError(f"{path} has no infl_matrix_class<c> arrays: not the Feldman-Zhang influence npz")
        for c in classes:
            infl, tr, tt = z[f"infl_matrix_class{c}"], z[f"tr_classidx_{c}"], z[f"tt_classidx_{c}"]
            if infl.shape != (len(tr), len(tt)):
                raise DataError(f"{path}: class {c}: influence matrix {infl.shape} is not {len(tr)} x {len(tt)}")
            top = infl.argmax(0)
            rows.append(
                pd.DataFrame(
                    {"tt": tt, "tr": tr[top], "fz_top_influence": infl[top, np.arange(len(tt))], "fz_class": c}
                )
            )
    pairs = pd.concat(rows, ignore_index=True)
    for col, mapping, name in (
        ("tr", train_map, "memo.feldman_zhang.mapping"),
        ("tt", test_map, "memo.feldman_zhang.test_mapping"),
    ):
        if mapping is None:
            continue
        missing = ~pairs[col].isin(mapping.index)
        if missing.any():
            raise DataError(f"{int(missing.sum())} Feldman-Zhang positions are not in {name}; check that file")
        pairs[col] = mapping.loc[pairs[col]].to_numpy()
    return pairs.rename(columns={"tt": "test_id", "tr": "fz_top_train_id"})[
        ["test_id", "fz_top_train_id", "fz_top_influence", "fz_class"]
    ]


def influence_dependence(
    held: pd.DataFrame, pairs: pd.DataFrame, train: pd.DataFrame, memo_quantile: float, influence_min: float
) -> pd.DataFrame:
    """Add fz_top_train_id, fz_top_influence, fz_memo_pct and dependent_influence to the test rows of
    ``held`` (NaN / False for validation samples, which FZ did not score). A top pair whose class
    is not the test sample's label is an error (wrong mapping)."""
    test = held["split"] == "test"
    got = held.loc[test, ["sample_id", "label"]].merge(pairs, left_on="sample_id", right_on="test_id", how="left")
    wrong = got["fz_class"].notna() & (got["fz_class"] != got["label"])
    if wrong.any():
        raise DataError(
            f"{int(wrong.sum())} Feldman-Zhang test samples have another class than ours: wrong test mapping"
        )
    pct = train.set_index("sample_id")["memo_pct_class"]
    out = held.copy()
    out["fz_top_train_id"] = np.nan
    out["fz_top_influence"] = np.nan
    out.loc[test, "fz_top_train_id"] = got["fz_top_train_id"].to_numpy()
    out.loc[test, "fz_top_influence"] = got["fz_top_influence"].to_numpy()
    out["fz_memo_pct"] = out["fz_top_train_id"].map(pct)
    out["dependent_influence"] = (out["fz_top_influence"] >= influence_min) & (
        out["fz_memo_pct"] >= 100 * memo_quantile
    )
    return out


def proxy_auroc(dependence: pd.DataFrame) -> pd.DataFrame:
    """AUROC of the proxy scores (nn_memo_pct, knn_memo_pct) for telling the planted near-duplicates
    (``duplicate_of`` >= 0) from the other test samples, and the share flagged memo-dependent in
    each group; empty without planted samples."""
    from sklearn.metrics import roc_auc_score

    test = dependence[dependence["split"] == "test"]
    planted = test["duplicate_of"].to_numpy() >= 0
    cols = ["score", "auroc", "n", "n_planted", "planted_dependent", "others_dependent"]
    if not planted.any() or planted.all():
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(
        [
            {
                "score": c,
                "auroc": roc_auc_score(planted, test[c].to_numpy()),
                "n": len(test),
                "n_planted": int(planted.sum()),
                "planted_dependent": float(test["dependent_proxy"].to_numpy()[planted].mean()),
                "others_dependent": float(test["dependent_proxy"].to_numpy()[~planted].mean()),
            }
            for c in ("nn_memo_pct", "knn_memo_pct")
        ],
        columns=cols,
    )
