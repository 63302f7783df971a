"""Data stage: CIFAR download + prepare against a real-format archive, splits, noise, class orders."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import tarfile
import threading

import numpy as np
import pytest

from memplast import data
from memplast import io as mpio


@pytest.fixture()
def served(tmp_path):
    """A loopback HTTP server over a directory holding a fake CIFAR-100 archive."""
    root = tmp_path / "served"
    root.mkdir()
    files = data.write_cifar100_archive(root / "cifar-100-python.tar.gz", 8, 2, seed=0)
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


def test_generated_archive_has_the_official_format_and_is_byte_identical(tmp_path):
    a, b, other = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz", tmp_path / "c.tar.gz"
    files = data.write_cifar100_archive(a, 4, 2, seed=3)
    data.write_cifar100_archive(b, 4, 2, seed=3)
    data.write_cifar100_archive(other, 4, 2, seed=4)
    assert a.read_bytes() == b.read_bytes() != other.read_bytes()  # so a config can pin the md5
    with tarfile.open(a, "r:gz") as tar:
        assert tar.getnames() == ["cifar-100-python/meta", "cifar-100-python/train", "cifar-100-python/test"]
        back = {m: pickle.loads(tar.extractfile(m).read(), encoding="bytes") for m in tar.getnames()}
    meta = back["cifar-100-python/meta"]
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    for member, per_class in (("cifar-100-python/train", 4), ("cifar-100-python/test", 2)):
        f = back[member]
        assert set(f) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
        assert f[b"data"].dtype == np.uint8 and f[b"data"].shape == (100 * per_class, 3072)
        np.testing.assert_array_equal(f[b"data"], files[member][b"data"])
        fine, coarse = np.asarray(f[b"fine_labels"]), np.asarray(f[b"coarse_labels"])
        assert (np.bincount(fine, minlength=100) == per_class).all()
        assert (fine[:100] != np.sort(fine[:100])).any()  # shuffled, like the official files
        # every fine class sits in one of 20 superclasses of 5
        pairs = set(zip(fine.tolist(), coarse.tolist()))
        assert len(pairs) == 100 and (np.bincount([c for _, c in pairs], minlength=20) == 5).all()


def test_generated_archive_classes_are_learnable(tmp_path):
    """Nearest class mean of the train file classifies the test file far above chance (1%)."""
    files = data.write_cifar100_archive(tmp_path / "a.tar.gz", 6, 2, seed=0)
    train, test = files["cifar-100-python/train"], files["cifar-100-python/test"]
    y_train, y_test = np.asarray(train[b"fine_labels"]), np.asarray(test[b"fine_labels"])
    means = np.stack([train[b"data"][y_train == c].astype(float).mean(0) for c in range(100)])
    x = test[b"data"].astype(float)
    dist = (x**2).sum(1)[:, None] - 2 * x @ means.T + (means**2).sum(1)[None]
    assert (dist.argmin(1) == y_test).mean() > 0.9


def test_file_url_mirror_goes_through_the_checksummed_download(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "cifar-100-python.tar.gz"
    data.write_cifar100_archive(mirror, 2, 1, seed=0)
    md5 = data.md5sum(mirror)
    monkeypatch.chdir(tmp_path)  # file:relative/path is relative to the working directory
    for url in ("file:mirror/cifar-100-python.tar.gz", mirror.as_uri()):
        target = tmp_path / "raw" / url[-6:].replace("/", "_") / "archive.tar.gz"
        assert data.download_cifar("cifar100", target, url=url, md5=md5).read_bytes() == mirror.read_bytes()
    with pytest.raises(data.DataError, match="checksum mismatch.*expected md5 0{32}"):
        data.download_cifar("cifar100", tmp_path / "bad" / "a.tar.gz", url=mirror.as_uri(), md5="0" * 32)
    assert list((tmp_path / "bad").iterdir()) == []
    with pytest.raises(data.DataError, match="could not download cifar100 from file:missing"):
        data.download_cifar("cifar100", tmp_path / "none" / "a.tar.gz", url="file:missing.tar.gz", md5=md5)


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
