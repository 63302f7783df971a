"""Feldman-Zhang import: npz reading, mapping files (CSV and pickle), bijection and label checks."""

import os
import pickle

import numpy as np
import pandas as pd
import pytest

from memplast import feldman_zhang as fzm
from memplast.data import DataError, safe_unpickle

N = 20


@pytest.fixture
def world(tmp_path):
    """A fake train file of 24 images (ids 0..23), FZ scores for 20 of them in a shuffled
    'TFDS' order; perm[t] is the sample id of TFDS position t."""
    rng = np.random.default_rng(0)
    our_labels = np.arange(24) % 5
    perm = rng.permutation(24)[:N]
    tr_mem = rng.random(N)
    npz = tmp_path / "cifar100_infl_matrix.npz"
    np.savez(npz, tr_mem=tr_mem, tr_labels=our_labels[perm], tt_mem=rng.random(3))
    return {"npz": npz, "perm": perm, "tr_mem": tr_mem, "labels": our_labels, "dir": tmp_path}


def expected(world):
    return pd.DataFrame({"sample_id": world["perm"], "fz_mem": world["tr_mem"]}).sort_values(
        "sample_id", ignore_index=True
    )


def test_load_fz_npz(world, tmp_path):
    fz = fzm.load_fz_npz(world["npz"])
    np.testing.assert_array_equal(fz["tr_mem"], world["tr_mem"])
    assert fz["tr_labels"].dtype == np.int64
    np.savez(tmp_path / "other.npz", tr_mem=np.zeros(3))
    with pytest.raises(DataError, match="tr_labels"):
        fzm.load_fz_npz(tmp_path / "other.npz")
    np.savez(tmp_path / "objects.npz", tr_mem=np.array([{"a": 1}], dtype=object), tr_labels=np.zeros(1))
    with pytest.raises(ValueError, match="allow_pickle"):  # object arrays would need pickle: refused
        fzm.load_fz_npz(tmp_path / "objects.npz")


def test_csv_mapping(world):
    rows = np.random.default_rng(1).permutation(N)  # row order of the file does not matter
    path = world["dir"] / "map.csv"
    pd.DataFrame({"tfds_id": rows, "sample_id": world["perm"][rows]}).to_csv(path, index=False)
    mapping = fzm.load_mapping(path)
    assert list(mapping.columns) == ["tfds_id", "sample_id"]
    out = fzm.map_fz_scores(fzm.load_fz_npz(world["npz"]), mapping, world["labels"])
    pd.testing.assert_frame_equal(out, expected(world))


@pytest.mark.parametrize(
    "frame",
    [
        lambda p: pd.DataFrame({"torch_id": p}),  # CSL-Mem layout: row position = TFDS position
        lambda p: pd.DataFrame({"tf_id": np.arange(N), "torch_id": p}).set_index("tf_id"),
        lambda p: pd.DataFrame({"tf_id": np.arange(N)[::-1], "torch_id": p[::-1]}),
        lambda p: pd.DataFrame({"tfds_id": np.arange(N), "sample_id": p}),
    ],
    ids=["torch_id", "tf_id-index", "tf_id-column", "tfds_id-sample_id"],
)
def test_pickle_mapping_layouts(world, frame):
    path = world["dir"] / "tf_id_2_torch_id2.pkl"
    frame(world["perm"]).to_pickle(path)  # pandas' own pickle: the globals the unpickler must allow
    out = fzm.map_fz_scores(fzm.load_fz_npz(world["npz"]), fzm.load_mapping(path), world["labels"])
    pd.testing.assert_frame_equal(out, expected(world))


def test_labels_as_series_indexed_by_sample_id(world):
    labels = pd.Series(world["labels"], index=np.arange(24)).sample(frac=1, random_state=0)
    mapping = pd.DataFrame({"tfds_id": np.arange(N), "sample_id": world["perm"]})
    out = fzm.map_fz_scores(fzm.load_fz_npz(world["npz"]), mapping, labels)
    pd.testing.assert_frame_equal(out, expected(world))


def test_bijection_violations_are_counted(world):
    fz = fzm.load_fz_npz(world["npz"])
    good = pd.DataFrame({"tfds_id": np.arange(N), "sample_id": world["perm"]})
    dup = good.copy()
    dup.loc[[3, 4, 5], "sample_id"] = dup.loc[2, "sample_id"]
    with pytest.raises(ValueError, match="not a bijection: 3 duplicated sample_id"):
        fzm.map_fz_scores(fz, dup, world["labels"])
    with pytest.raises(ValueError, match="19 rows for 20 FZ samples"):
        fzm.map_fz_scores(fz, good.iloc[1:], world["labels"])
    bad_tfds = good.copy()
    bad_tfds.loc[0, "tfds_id"] = N
    bad_tfds.loc[1, "tfds_id"] = 5
    with pytest.raises(ValueError, match=r"1 tfds_id outside \[0, 20\); 1 duplicated tfds_id"):
        fzm.map_fz_scores(fz, bad_tfds, world["labels"])
    unknown = good.copy()
    unknown.loc[0, "sample_id"] = 999
    with pytest.raises(ValueError, match="1 sample_id not among our samples"):
        fzm.map_fz_scores(fz, unknown, world["labels"])


def test_label_mismatch_is_counted(world):
    fz = fzm.load_fz_npz(world["npz"])
    perm = world["perm"].copy()
    labels = world["labels"]
    a, b = 0, next(t for t in range(1, N) if labels[perm[t]] != labels[perm[0]])
    perm[[a, b]] = perm[[b, a]]  # a bijection, but two rows now point at the wrong images
    mapping = pd.DataFrame({"tfds_id": np.arange(N), "sample_id": perm})
    with pytest.raises(ValueError, match="disagree with ours for 2 of 20 rows"):
        fzm.map_fz_scores(fz, mapping, labels)
    noisy = labels.copy()
    noisy[world["perm"][:3]] = (noisy[world["perm"][:3]] + 1) % 5  # planted noise must not be passed in
    with pytest.raises(ValueError, match="3 of 20 rows"):
        fzm.map_fz_scores(fz, pd.DataFrame({"tfds_id": np.arange(N), "sample_id": world["perm"]}), noisy)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_restricted_unpickler_refuses_os_system(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "mapping.pkl"
    path.write_bytes(pickle.dumps(_Evil(target)))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        safe_unpickle(path.read_bytes())
    with pytest.raises(DataError, match="refusing to unpickle global .*system"):
        fzm.load_mapping(path)
    assert not target.exists()


def test_mapping_format_errors(tmp_path):
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="expected columns"):
        fzm.load_mapping(tmp_path / "m.csv")
    pd.DataFrame({"tfds_id": [0.5], "sample_id": [1]}).to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(DataError, match="tfds_id must be integers"):
        fzm.load_mapping(tmp_path / "f.csv")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(DataError, match=".csv or .pkl"):
        fzm.load_mapping(tmp_path / "m.json")
    pd.Series([1, 2]).to_pickle(tmp_path / "s.pkl")
    with pytest.raises(DataError):  # a Series is not a mapping frame (or not even allowed)
        fzm.load_mapping(tmp_path / "s.pkl")


def test_download(world, tmp_path):
    dest = tmp_path / "dl" / "fz.npz"
    assert fzm.download_fz(world["npz"].as_uri(), dest) == dest
    np.testing.assert_array_equal(fzm.load_fz_npz(dest)["tr_mem"], world["tr_mem"])
    np.savez(tmp_path / "not_fz.npz", x=np.zeros(2))
    with pytest.raises(DataError, match="tr_labels"):
        fzm.download_fz((tmp_path / "not_fz.npz").as_uri(), tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "bad.npz.part").exists()
    with pytest.raises(DataError, match="could not download .* copy it to"):
        fzm.download_fz("http://127.0.0.1:9/cifar100_infl_matrix.npz", tmp_path / "off.npz")
    assert not list(tmp_path.glob("off.npz*"))


def test_import_script_maps_and_verifies(tmp_path):
    """scripts/feldman_zhang_import.py from a CSV mapping and a fixture npz, run as a user would."""
    import subprocess
    import sys

    from conftest import ROOT

    from memplast import io as mpio

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 40)
    perm = rng.permutation(40)  # tfds position t holds our sample perm[t]
    np.savez(tmp_path / "fz.npz", tr_mem=rng.random(40), tr_labels=labels[perm])
    pd.DataFrame({"tfds_id": np.arange(40), "sample_id": perm}).to_csv(tmp_path / "map.csv", index=False)
    samples = pd.DataFrame(
        {
            "sample_id": np.arange(40),
            "source": "train",
            "split": "train",
            "label": labels,
            "orig_label": labels,
            "noisy": False,
        }
    )
    mpio.write_parquet(samples, tmp_path / "samples.parquet", {})
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "feldman_zhang_import.py"),
            "--npz",
            str(tmp_path / "fz.npz"),
            "--mapping",
            str(tmp_path / "map.csv"),
            "--samples",
            str(tmp_path / "samples.parquet"),
            "--fz",
            str(tmp_path / "fz.parquet"),
            "--cfg",
            "{}",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    fz = pd.read_parquet(tmp_path / "fz.parquet")
    z = np.load(tmp_path / "fz.npz")
    np.testing.assert_allclose(fz.set_index("sample_id").loc[perm, "fz_mem"], z["tr_mem"])
    samples.loc[3, "orig_label"] = (samples.loc[3, "orig_label"] + 1) % 5
    mpio.write_parquet(samples, tmp_path / "samples.parquet", {})
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "feldman_zhang_import.py"),
            "--npz",
            str(tmp_path / "fz.npz"),
            "--mapping",
            str(tmp_path / "map.csv"),
            "--samples",
            str(tmp_path / "samples.parquet"),
            "--fz",
            str(tmp_path / "fz2.parquet"),
            "--cfg",
            "{}",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "disagree with ours for 1 of 40 rows" in bad.stderr
    assert not (tmp_path / "fz2.parquet").exists()
