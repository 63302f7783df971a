"""Data stage: CIFAR download + prepare against a real-format archive, splits, noise, class orders."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest

from memplast import data
from memplast import io as mpio


def _cifar100_archive(path, n_per_class_train=8, n_per_class_test=2, n_classes=100, seed=0):
    """A small archive in the official CIFAR-100 python format (pickled dicts in a tar.gz)."""
    rng = np.random.default_rng(seed)

    def batch(n_per_class):
        labels = np.tile(np.arange(n_classes), n_per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        return {
            b"data": images,
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
            b"filenames": [b"x.png"] * len(labels),
            b"batch_label": b"training batch 1 of 1",
        }

    files = {
        "cifar-100-python/train": batch(n_per_class_train),
        "cifar-100-python/test": batch(n_per_class_test),
        "cifar-100-python/meta": {b"fine_label_names": [b"c"] * n_classes},
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return files


@pytest.fixture()
def served(tmp_path):
    """A loopback HTTP server over a directory holding a fake CIFAR-100 archive."""
    root = tmp_path / "served"
    root.mkdir()
    files = _cifar100_archive(root / "cifar-100-python.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-100-python.tar.gz"
    md5 = hashlib.md5((root / "cifar-100-python.tar.gz").read_bytes()).hexdigest()
    yield url, md5, files
    server.shutdown()


def test_download_and_prepare_cifar100(served, tmp_path, paper_config):
    url, md5, files = served
    archive = data.download_cifar("cifar100", tmp_path / "raw" / "archive.tar.gz", url=url, md5=md5)
    cfg = {**paper_config["dataset"], "n_val_per_class": 3}
    p = data.prepare(cfg, archive=archive)
    train_file = files["cifar-100-python/train"]
    labels = np.asarray(train_file[b"fine_labels"])
    # every train-file image is present once, traceable by its index in the file
    tr = p.source == "train"
    assert sorted(p.sample_id[tr]) == list(range(len(labels)))
    np.testing.assert_array_equal(
        p.images[tr][np.argsort(p.sample_id[tr])].reshape(len(labels), -1), train_file[b"data"]
    )
    # LoP split: per class, the first 3 in file order are validation, the other 5 train
    for c in range(100):
        idx = np.flatnonzero(labels == c)
        split_of = dict(zip(p.sample_id[tr], p.split[tr]))
        assert [split_of[i] for i in idx] == ["val"] * 3 + ["train"] * 5
    assert (p.split[~tr] == "test").all() and (~tr).sum() == 200
    assert p.mean == list(data.CIFAR100_MEAN)
    # ids unique within each source file
    table = p.table()
    assert not table.duplicated(["source", "sample_id"]).any()


def test_wrong_checksum_is_an_error_and_leaves_nothing(served, tmp_path):
    url, md5, _ = served
    target = tmp_path / "raw" / "archive.tar.gz"
    with pytest.raises(data.DataError, match="checksum mismatch.*expected md5 0{32}"):
        data.download_cifar("cifar100", target, url=url, md5="0" * 32)
    assert list((tmp_path / "raw").iterdir()) == []


def test_unreachable_url_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="could not download cifar100"):
        data.download_cifar("cifar100", tmp_path / "a.tar.gz", url="http://127.0.0.1:9/none.tar.gz", md5="0" * 32)


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global"):
        data.safe_unpickle(pickle.dumps(Evil()))


def test_digits_split_invariants_and_determinism(demo_config):
    cfg = {**demo_config["dataset"], "near_duplicates": {"n": 0}}  # planted test samples: tests/test_dependence.py
    a = data.prepare(cfg)
    b = data.prepare(cfg)
    np.testing.assert_array_equal(a.split, b.split)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.images.shape == (1797, 1, 8, 8) and a.images.dtype == np.uint8
    assert sorted(a.sample_id) == list(range(1797))
    fr = demo_config["dataset"]["split_fractions"]
    for c in range(10):
        in_c = a.orig_labels == c
        n = in_c.sum()
        assert (a.split[in_c] == "val").sum() == round(fr["val"] * n)
        assert (a.split[in_c] == "test").sum() == round(fr["test"] * n)
    other = data.prepare({**cfg, "split_seed": 1})
    assert (other.split != a.split).any()


def test_label_noise_flips_exact_fraction_never_to_same_label():
    labels = np.repeat(np.arange(10), 50)
    split = np.where(np.arange(500) % 5 == 0, "val", "train").astype(object)
    new, noisy = data.plant_label_noise(labels, split, 0.1, 10, seed=3)
    n_train = (split == "train").sum()
    assert noisy.sum() == round(0.1 * n_train)
    assert (new[noisy] != labels[noisy]).all()
    assert (new[~noisy] == labels[~noisy]).all()
    assert not noisy[split == "val"].any()
    again, noisy2 = data.plant_label_noise(labels, split, 0.1, 10, seed=3)
    np.testing.assert_array_equal(again, new)
    _, noisy3 = data.plant_label_noise(labels, split, 0.1, 10, seed=4)
    assert (noisy3 != noisy).any()


def test_synthetic_is_class_structured_and_seeded():
    x, y = data.make_synthetic(5, (3, 16, 16), 20, seed=1)
    x2, _ = data.make_synthetic(5, (3, 16, 16), 20, seed=1)
    np.testing.assert_array_equal(x, x2)
    assert x.shape == (100, 3, 16, 16) and x.dtype == np.uint8
    means = np.stack([x[y == c].reshape(20, -1).mean(0) for c in range(5)]).astype(float)
    within = np.mean([x[y == c].reshape(20, -1).astype(float).std(0).mean() for c in range(5)])
    assert np.abs(means[:, None] - means[None]).mean() > 0.5 * within  # classes differ beyond noise


def test_class_orders_are_stable_permutations():
    for seed in range(5):
        order = data.class_order(seed, 100, lop_compatible=True)
        assert sorted(order) == list(range(100))
        np.testing.assert_array_equal(order, data.class_order(seed, 100, lop_compatible=True))
    assert (data.class_order(0, 100, True) != data.class_order(1, 100, True)).any()
    assert (data.class_order(0, 100, True) != data.class_order(0, 100, False)).any()


def test_lop_compatible_order_follows_the_reference_recipe():
    import torch

    torch.manual_seed(42)
    seeds = torch.randperm(100000)
    np.random.seed(int(seeds[2]))
    expected = np.random.permutation(100)
    np.testing.assert_array_equal(data.class_order(2, 100, lop_compatible=True), expected)


def test_prepared_roundtrip_keeps_provenance(tmp_path, digits):
    path = tmp_path / "p.npz"
    data.save_prepared(digits, path, mpio.provenance({"dataset": {"name": "digits"}}))
    back = data.load_prepared(path)
    np.testing.assert_array_equal(back.images, digits.images)
    np.testing.assert_array_equal(back.split, digits.split)
    assert mpio.read_provenance(path)["config"]["dataset"]["name"] == "digits"
