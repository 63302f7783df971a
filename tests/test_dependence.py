"""Held-out samples that depend on memorized training samples (memplast/dependence.py): the
neighbour proxy against a brute-force re-statement, planted near-duplicates, and the
Feldman-Zhang influence path on built files (no network)."""

from __future__ import annotations

import copy
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from memplast import data, io
from memplast.augment import normalize
from memplast.checkpoints import model_meta, save_checkpoint
from memplast.dependence import neighbour_dependence, penultimate_features, proxy_auroc
from memplast.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_neighbour_proxy_equals_brute_force():
    rng = np.random.default_rng(0)
    n_tr, n_te, k = 60, 25, 3
    f = lambda n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(rng.normal(size=(n, 6)))  # noqa: E731
    train = pd.DataFrame({"sample_id": rng.permutation(1000)[:n_tr], "label": rng.integers(0, 3, n_tr),
                          "memo_pct_class": rng.uniform(0, 100, n_tr)})  # fmt: skip
    held = pd.DataFrame({"split": "test", "sample_id": np.arange(n_te), "label": rng.integers(0, 3, n_te)})
    tf, hf = f(n_tr), f(n_te)
    out = neighbour_dependence(tf, train, hf, held, k, 0.8)
    for i, row in out.iterrows():
        same = train.index[train.label == row.label]
        cos = {j: float(hf[i] @ tf[j]) for j in same}
        ranked = sorted(cos, key=lambda j: -cos[j])
        assert row.nn_sample_id == train.sample_id[ranked[0]]
        assert row.nn_cosine == pytest.approx(cos[ranked[0]])
        assert row.nn_memo_pct == train.memo_pct_class[ranked[0]]
        assert row.knn_memo_pct == pytest.approx(train.memo_pct_class[ranked[:k]].mean())
        assert row.dependent_proxy == (row.nn_memo_pct >= 80)


def test_near_duplicates_of_mislabelled_samples_carry_their_noisy_label(demo_config):
    cfg = copy.deepcopy(demo_config["dataset"])
    cfg["near_duplicates"] = {"n": 12, "pixel_noise": 2.0, "seed": 3}
    p = data.prepare(cfg)
    plain = data.prepare({**cfg, "near_duplicates": {"n": 0}})
    planted = np.flatnonzero(p.duplicate_of >= 0)
    assert len(planted) == 12 and (p.split[planted] == "test").all() and len(p.labels) == len(plain.labels) + 12
    src = plain.rows_of(p.duplicate_of[planted], "train")
    assert plain.noisy[src].all()
    np.testing.assert_array_equal(p.labels[planted], plain.labels[src])  # the flipped label
    diff = p.images[planted].astype(float) - plain.images[src]
    assert 0 < np.abs(diff).mean() < 4  # near, not identical
    assert len(np.unique(p.sample_id[p.split == "test"])) == (p.split == "test").sum()  # ids unique in the split
    with pytest.raises(data.DataError, match="only .* training labels are flipped"):
        data.prepare({**cfg, "near_duplicates": {"n": 10_000}})


def test_proxy_finds_the_planted_near_duplicates(demo_config):
    """Any scorer's features put a near-duplicate next to its source; with the planted noisy
    samples as the memorized ones, the proxy flags exactly the planted held-out samples."""
    cfg = copy.deepcopy(demo_config["dataset"])
    cfg["near_duplicates"] = {"n": 20, "pixel_noise": 2.0, "seed": 0}
    p = data.prepare(cfg)
    torch.manual_seed(0)
    model = build_model("small_cnn", p.n_classes, 1, 16).eval()
    tr = p.indices("train")
    held = np.flatnonzero(p.split != "train")
    feats = lambda rows: penultimate_features(
        model, normalize(torch.as_tensor(p.images[rows]), p.mean, p.std), 256, "cpu"
    )  # noqa: E731
    train = pd.DataFrame(
        {"sample_id": p.sample_id[tr], "label": p.labels[tr], "memo_pct_class": np.where(p.noisy[tr], 99.0, 10.0)}
    )
    table = neighbour_dependence(feats(tr), train, feats(held), pd.DataFrame(
        {"split": p.split[held], "sample_id": p.sample_id[held], "label": p.labels[held]}), 5, 0.9)  # fmt: skip
    table["duplicate_of"] = p.duplicate_of[held]
    planted = table[table.duplicate_of >= 0]
    assert (planted.nn_sample_id == planted.duplicate_of).all()
    auroc = proxy_auroc(table).set_index("score")
    assert auroc.loc["nn_memo_pct", "auroc"] > 0.9 and auroc.loc["nn_memo_pct", "planted_dependent"] == 1.0
    # without the planted memorized sources the proxy has nothing to find
    train["memo_pct_class"] = 10.0
    flat = neighbour_dependence(feats(tr), train, feats(held), table[["split", "sample_id", "label"]], 5, 0.9)
    assert (
        proxy_auroc(flat.assign(duplicate_of=table.duplicate_of)).set_index("score").loc["nn_memo_pct", "auroc"] == 0.5
    )


def _fz_files(tmp, p, train_ids, test_ids):
    """An FZ-format influence npz (per class, TFDS positions = reversed id order) and both mappings."""
    tr_tfds = pd.Series(np.arange(len(train_ids))[::-1], index=train_ids)  # sample id -> TFDS position
    te_tfds = pd.Series(np.arange(len(test_ids))[::-1], index=test_ids)
    arrays, rng = {}, np.random.default_rng(1)
    lab = pd.Series(p.labels, index=[(s, i) for s, i in zip(p.split, p.sample_id)])
    for c in range(p.n_classes):
        tr = np.array([tr_tfds[i] for i in train_ids if lab[("train", i)] == c])
        tt = np.array([te_tfds[i] for i in test_ids if lab[("test", i)] == c])
        arrays[f"infl_matrix_class{c}"] = rng.uniform(0, 0.1, size=(len(tr), len(tt)))
        arrays[f"tr_classidx_{c}"], arrays[f"tt_classidx_{c}"] = tr, tt
    np.savez(tmp / "infl.npz", **arrays)
    pd.DataFrame({"tfds_id": tr_tfds.to_numpy(), "sample_id": tr_tfds.index}).to_csv(tmp / "map.csv", index=False)
    pd.DataFrame({"tfds_id": te_tfds.to_numpy(), "sample_id": te_tfds.index}).to_csv(tmp / "test_map.csv", index=False)
    return arrays, tr_tfds, te_tfds


def test_feldman_zhang_influence_path_on_built_files(tmp_path, demo_config):
    cfg = copy.deepcopy(demo_config)
    p = data.prepare(cfg["dataset"])
    data.save_prepared(p, tmp_path / "prepared.npz", {})
    model = build_model("small_cnn", p.n_classes, 1, 16)
    save_checkpoint(tmp_path / "e1.pt", model, {**model_meta("small_cnn", 16, p.n_classes, 1), "epoch": 1}, {})
    train_ids, test_ids = p.sample_id[p.split == "train"], p.sample_id[p.split == "test"]
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"sample_id": train_ids, "split": "train", "label": p.labels[p.split == "train"],
                           "curv_exact_pct_class": rng.uniform(0, 100, len(train_ids))})  # fmt: skip
    io.write_parquet(scores, tmp_path / "scores.parquet", {})
    arrays, tr_tfds, te_tfds = _fz_files(tmp_path, p, train_ids, test_ids)
    # plant: test sample T depends on high-memo training sample H of its class (influence 0.5)
    T = int(test_ids[0])
    c = int(p.labels[(p.split == "test") & (p.sample_id == T)][0])
    same = scores[(scores.label == c)].sort_values("curv_exact_pct_class")
    H, L = int(same.sample_id.iloc[-1]), int(same.sample_id.iloc[0])  # highest and lowest memo
    T2 = int(test_ids[(p.labels[p.split == "test"] == c)][1])
    m = arrays[f"infl_matrix_class{c}"]
    row = lambda i: int(np.flatnonzero(arrays[f"tr_classidx_{c}"] == tr_tfds[i])[0])  # noqa: E731
    col = lambda j: int(np.flatnonzero(arrays[f"tt_classidx_{c}"] == te_tfds[j])[0])  # noqa: E731
    m[row(H), col(T)] = 0.5
    m[row(L), col(T2)] = 0.5  # strongly influenced, but by a low-memo sample
    np.savez(tmp_path / "infl.npz", **arrays)
    cfg["heldout"] = {"neighbours": 3, "memo_quantile": 0.9, "influence_min": 0.15}
    main = runpy.run_path(str(ROOT / "scripts" / "heldout_dependence.py"), run_name="test")["main"]
    kw = dict(prepared=str(tmp_path / "prepared.npz"), checkpoint=str(tmp_path / "e1.pt"),
              scores=str(tmp_path / "scores.parquet"), dependence_table=str(tmp_path / "dep.parquet"),
              score_col="curv_exact", cfg=cfg, runtime={"device": "cpu"}, fz_npz=str(tmp_path / "infl.npz"),
              fz_mapping=str(tmp_path / "map.csv"), fz_test_mapping=str(tmp_path / "test_map.csv"))  # fmt: skip
    main(**kw)
    out = io.read_parquet(tmp_path / "dep.parquet")
    test = out[out.split == "test"].set_index("sample_id")
    assert test.loc[T, "fz_top_train_id"] == H and test.loc[T, "fz_top_influence"] == 0.5
    assert test.loc[T2, "fz_top_train_id"] == L
    assert test["dependent_influence"].sum() == 1 and test.loc[T, "dependent_influence"]
    assert out.loc[out.split == "val", "fz_top_influence"].isna().all()
    assert len(out) == (p.split != "train").sum() and out["nn_memo_pct"].notna().all()
    # a test mapping that pairs test samples with another class is refused
    bad = pd.read_csv(tmp_path / "test_map.csv")
    bad["sample_id"] = np.roll(bad["sample_id"].to_numpy(), 1)
    bad.to_csv(tmp_path / "test_map.csv", index=False)
    with pytest.raises(data.DataError, match="another class than ours"):
        main(**kw)
