"""Datasets: download, split, planted label noise, normalization and class orders.

A prepared dataset is one compact ``.npz`` (uint8 images N x C x H x W, labels, ids, splits)
plus a per-sample Parquet table. ``sample_id`` is the index in the original file
(CIFAR train or test file, sklearn's digits array, or the synthetic generator) and
``source`` says which file ("train" or "test"), so every id traces back to its image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from memplast import grid

# The reference (Dohare et al.) normalizes CIFAR-100 with these train-set statistics.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# Archive layout of the official python versions: (tar member name, label key) per file.
CIFAR_LAYOUT = {
    "cifar100": {
        "train": ["cifar-100-python/train"],
        "test": ["cifar-100-python/test"],
        "label_key": b"fine_labels",
    },
    "cifar10": {
        "train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
        "test": ["cifar-10-batches-py/test_batch"],
        "label_key": b"labels",
    },
}


class DataError(ValueError):
    """Bad or missing input data; the message names the cause and the fix."""


# --------------------------------------------------------------------------- safe unpickling
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers, numpy arrays and pandas frames.

    CIFAR's python archives and the Feldman-Zhang mapping are pickles from the internet;
    a plain ``pickle.load`` would execute whatever globals they name.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "slice"),
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.series", "Series"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas.core.internals.blocks", "new_block"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas.core.indexes.numeric", "Int64Index"),
        ("pandas._libs.internals", "BlockPlacement"),
        ("_codecs", "encode"),
        # what DataFrame.to_pickle emits under pandas 3 / numpy 2 (protocol 5): top-level
        # class paths, buffer-backed arrays, and pyarrow-backed string column labels
        ("pandas", "DataFrame"),
        ("pandas", "Index"),
        ("pandas", "RangeIndex"),
        ("pandas", "StringDtype"),
        ("pandas.arrays", "ArrowStringArray"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("pyarrow.lib", "_restore_array"),
        ("pyarrow.lib", "py_buffer"),
        ("pyarrow.lib", "type_for_alias"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: only numpy/pandas data is allowed")


def safe_unpickle(data: bytes, encoding: str = "ASCII"):
    """Unpickle bytes allowing only numpy/pandas reconstruction globals."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


# --------------------------------------------------------------------------- CIFAR
def md5sum(path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cifar_defaults(name: str) -> tuple[str, str, str]:
    """(url, md5, filename) that torchvision uses for the official archive."""
    from torchvision import datasets

    cls = {"cifar100": datasets.CIFAR100, "cifar10": datasets.CIFAR10}[name]
    return cls.url, cls.tgz_md5, cls.filename


def local_path(url: str) -> Path:
    """The file a ``file:`` URL names: ``file:///abs/path``, or ``file:rel/path`` relative to the
    working directory (the workflow directory under Snakemake)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise DataError(f"{url} is not a local file: URL; write file:///absolute/path or file:relative/path")
    return Path(url2pathname(parsed.path))


def download_cifar(name: str, archive: str | Path, url: str | None = None, md5: str | None = None) -> Path:
    """Download the official CIFAR archive with torchvision (or copy it from a ``file:`` URL, a local
    mirror) and verify its md5.

    On a checksum mismatch the downloaded file is removed and a DataError names both sums.
    """
    if not (url and md5):  # torchvision's constants (its import costs seconds; a mirror needs neither)
        default_url, default_md5, _ = cifar_defaults(name)
        url, md5 = url or default_url, md5 or default_md5
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = archive.name + ".part"
    try:
        if url.startswith("file:"):  # a local mirror (torchvision's downloader reads only http[s])
            shutil.copyfile(local_path(url), archive.parent / tmp_name)
        else:
            from torchvision.datasets.utils import download_url

            download_url(url, str(archive.parent), filename=tmp_name, md5=None)
    except Exception as exc:  # urllib raises many types; all mean the same thing here
        (archive.parent / tmp_name).unlink(missing_ok=True)
        raise DataError(
            f"could not download {name} from {url} ({exc}); check the network or set dataset.url to a mirror"
        ) from exc
    got = md5sum(archive.parent / tmp_name)
    if got != md5:
        (archive.parent / tmp_name).unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {name} archive from {url}: expected md5 {md5}, got {got}; "
            "the download is corrupt or dataset.md5 is wrong"
        )
    (archive.parent / tmp_name).rename(archive)
    return archive


def load_cifar_archive(name: str, archive: str | Path):
    """Read images (N x 3 x 32 x 32 uint8) and labels of both files from the tar.gz, no extraction."""
    layout = CIFAR_LAYOUT[name]
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        members = set(tar.getnames())
        for source in ("train", "test"):
            images, labels = [], []
            for member in layout[source]:
                if member not in members:
                    raise DataError(f"{archive} has no member {member}: not an official {name} python archive")
                batch = safe_unpickle(tar.extractfile(member).read(), encoding="bytes")
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[layout["label_key"]], dtype=np.int64))
            out[source] = (np.concatenate(images), np.concatenate(labels))
    return out


def write_cifar100_archive(path, train_per_class: int, test_per_class: int, seed: int, noise: float = 0.6):
    """A CIFAR-100 archive in the official python format, of :func:`make_synthetic`'s learnable
    class-structured 3x32x32 images: ``cifar-100-python/{meta,train,test}`` pickles (protocol 2)
    with the official keys, ``data`` uint8 N x 3072 (R, G, B planes, rows top to bottom), each file
    in a seeded shuffled order. Byte-identical for the same arguments (gzip and tar carry no time or file name),
    so a config can pin its md5. Returns {member name: unpickled content}.
    """
    n_classes = 100
    images, labels = make_synthetic(n_classes, (3, 32, 32), train_per_class + test_per_class, seed, noise)
    within = np.tile(np.arange(train_per_class + test_per_class), n_classes)  # position in its class
    coarse_of = np.random.default_rng(seed).permutation(n_classes) // 5  # 20 superclasses of 5
    rng = np.random.default_rng(seed + 1)

    def batch(rows, label):
        rows = rows[rng.permutation(len(rows))]
        return {
            b"filenames": [f"synthetic_c{labels[i]:03d}_{within[i]:04d}.png".encode() for i in rows],
            b"batch_label": label,
            b"fine_labels": labels[rows].tolist(),
            b"coarse_labels": coarse_of[labels[rows]].tolist(),
            b"data": images[rows].reshape(len(rows), 3 * 32 * 32),
        }

    files = {
        "cifar-100-python/meta": {
            b"fine_label_names": [f"class_{c:03d}".encode() for c in range(n_classes)],
            b"coarse_label_names": [f"superclass_{c:02d}".encode() for c in range(n_classes // 5)],
        },
        "cifar-100-python/train": batch(np.flatnonzero(within < train_per_class), b"training batch 1 of 1"),
        "cifar-100-python/test": batch(np.flatnonzero(within >= train_per_class), b"testing batch 1 of 1"),
    }
    from memplast.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for member, obj in files.items():
                payload = pickle.dumps(obj, protocol=2)
                info = tarfile.TarInfo(member)
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
    return files


def lop_split(labels: np.ndarray, n_val_per_class: int) -> np.ndarray:
    """Per class, in file order, the first ``n_val_per_class`` samples -> 'val', the rest -> 'train'."""
    split = np.full(len(labels), "train", dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= n_val_per_class:
            raise DataError(
                f"class {c} has {len(idx)} samples, not more than n_val_per_class={n_val_per_class}; lower it"
            )
        split[idx[:n_val_per_class]] = "val"
    return split


def fraction_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Per class, a seeded permutation: first round(val*n) -> val, next round(test*n) -> test, rest -> train."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = round(val_fraction * len(idx)), round(test_fraction * len(idx))
        if n_val + n_test >= len(idx):
            raise DataError(f"class {c}: split fractions leave no training sample; lower dataset.split_fractions")
        split[idx[:n_val]] = "val"
        split[idx[n_val : n_val + n_test]] = "test"
    return split


# --------------------------------------------------------------------------- digits, synthetic
def load_digits_arrays():
    """scikit-learn's bundled 8x8 digits (offline, real data) as uint8 1x8x8 images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


def make_synthetic(n_classes: int, shape, n_per_class: int, seed: int, noise: float = 0.6):
    """Class-structured random images: a smooth random prototype per class plus per-sample noise.

    Returns uint8 images (n_classes * n_per_class, *shape) and labels, class-major order.
    """
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = rng.normal(size=(n_classes, c, max(h // 4, 1), max(w // 4, 1)))
    proto = np.repeat(np.repeat(coarse, -(-h // coarse.shape[2]), axis=2), -(-w // coarse.shape[3]), axis=3)[
        :, :, :h, :w
    ]
    labels = np.repeat(np.arange(n_classes), n_per_class)
    x = proto[labels] + noise * rng.normal(size=(len(labels), c, h, w))
    images = np.clip(np.rint(127.5 + 50.0 * x), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------- noise, normalization
def plant_label_noise(labels: np.ndarray, split: np.ndarray, fraction: float, n_classes: int, seed: int):
    """Flip exactly round(fraction * n_train) train labels, each to a uniformly drawn *other* class.

    Returns (new_labels, noisy_mask). Validation and test labels are never touched.
    """
    labels = labels.copy()
    noisy = np.zeros(len(labels), dtype=bool)
    train = np.flatnonzero(split == "train")
    n_flip = round(fraction * len(train))
    if n_flip == 0:
        return labels, noisy
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(train, size=n_flip, replace=False))
    offset = rng.integers(1, n_classes, size=n_flip)  # 1..C-1: never the same class
    labels[chosen] = (labels[chosen] + offset) % n_classes
    noisy[chosen] = True
    return labels, noisy


def plant_near_duplicates(p: Prepared, n: int, pixel_noise: float, seed: int) -> Prepared:
    """Append to the test split a near-duplicate of each of ``n`` mislabelled training samples
    (drawn without replacement): its image plus Gaussian pixel noise of std ``pixel_noise`` (uint8
    units, rounded and clipped), carrying the training sample's *noisy* label, so that it is
    classified correctly only if that mislabelled sample was memorized (Feldman & Zhang 2020).
    New sample ids follow the largest test id; ``duplicate_of`` names the training sample."""
    noisy = np.flatnonzero(p.noisy & (p.split == "train"))
    if n > len(noisy):
        raise DataError(
            f"dataset.near_duplicates.n = {n} but only {len(noisy)} training labels are flipped; "
            "lower n or raise dataset.label_noise.fraction"
        )
    if n == 0:
        return p
    rng = np.random.default_rng(seed)
    src = np.sort(rng.choice(noisy, size=n, replace=False))
    images = np.clip(np.rint(p.images[src] + rng.normal(0.0, pixel_noise, size=p.images[src].shape)), 0, 255)
    test = p.split == "test"
    first = int(p.sample_id[test].max()) + 1 if test.any() else 0
    new = {
        "images": images.astype(np.uint8),
        "labels": p.labels[src],
        "orig_labels": p.labels[src],
        "noisy": np.zeros(n, dtype=bool),
        "sample_id": np.arange(first, first + n),
        "source": np.full(n, "planted", dtype=object),
        "split": np.full(n, "test", dtype=object),
        "duplicate_of": p.sample_id[src],
    }
    arrays = {k: np.concatenate([getattr(p, k), v]) for k, v in new.items()}
    return Prepared(name=p.name, mean=p.mean, std=p.std, n_classes=p.n_classes, **arrays)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1]."""
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)).tolist(), x.std(axis=(0, 2, 3)).tolist()


# --------------------------------------------------------------------------- prepared dataset
@dataclass
class Prepared:
    """A prepared dataset in memory. Arrays are aligned; ``split`` in {train, val, test}."""

    name: str
    images: np.ndarray  # uint8 N x C x H x W
    labels: np.ndarray  # int64, after planted noise
    orig_labels: np.ndarray
    noisy: np.ndarray
    sample_id: np.ndarray
    source: np.ndarray  # which original file: "train" or "test"
    split: np.ndarray
    mean: list
    std: list
    n_classes: int
    # planted near-duplicates (test split): the training sample each copies; -1 for every other sample
    duplicate_of: np.ndarray | None = None

    def __post_init__(self):
        if self.duplicate_of is None:
            self.duplicate_of = np.full(len(self.labels), -1, dtype=np.int64)

    def table(self) -> pd.DataFrame:
        """Per-sample metadata (no pixels)."""
        return pd.DataFrame(
            {
                "sample_id": self.sample_id,
                "source": self.source.astype(str),
                "split": self.split.astype(str),
                "label": self.labels,
                "orig_label": self.orig_labels,
                "noisy": self.noisy,
                "duplicate_of": self.duplicate_of,
            }
        )

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def rows_of(self, sample_ids, split: str = "train") -> np.ndarray:
        """Row positions of the given sample ids within ``split`` (ids are unique per split)."""
        rows = self.indices(split)
        lookup = pd.Series(rows, index=self.sample_id[rows])
        missing = ~pd.Index(sample_ids).isin(lookup.index)
        if missing.any():
            raise DataError(f"{missing.sum()} sample ids are not in the {split} split of {self.name}")
        return lookup.loc[np.asarray(sample_ids)].to_numpy()


def prepare(dataset_cfg: dict, archive: str | Path | None = None) -> Prepared:
    """Build the prepared dataset described by the ``dataset`` config section."""
    name = dataset_cfg["name"]
    fractions = dataset_cfg["split_fractions"]
    if name in CIFAR_LAYOUT:
        if archive is None:
            raise DataError(f"{name} needs its downloaded archive")
        files = load_cifar_archive(name, archive)
        (tr_x, tr_y), (te_x, te_y) = files["train"], files["test"]
        images = np.concatenate([tr_x, te_x])
        labels = np.concatenate([tr_y, te_y])
        sample_id = np.concatenate([np.arange(len(tr_y)), np.arange(len(te_y))])
        source = np.array(["train"] * len(tr_y) + ["test"] * len(te_y), dtype=object)
        split = np.concatenate(
            [lop_split(tr_y, dataset_cfg["n_val_per_class"]), np.full(len(te_y), "test", dtype=object)]
        )
    else:
        if name == "digits":
            images, labels = load_digits_arrays()
        elif name == "synthetic":
            s = dataset_cfg["synthetic"]
            images, labels = make_synthetic(s["n_classes"], tuple(s["shape"]), s["n_per_class"], s["seed"], s["noise"])
        else:
            raise DataError(f"unknown dataset {name!r}; choose one of cifar100, cifar10, digits, synthetic")
        sample_id = np.arange(len(labels))
        source = np.full(len(labels), "train", dtype=object)
        split = fraction_split(labels, fractions["val"], fractions["test"], dataset_cfg["split_seed"])
    n_classes = grid.n_classes(dataset_cfg)
    noise = dataset_cfg["label_noise"]
    noisy_labels, noisy = plant_label_noise(labels, split, noise["fraction"], n_classes, noise["seed"])
    if name == "cifar100":
        mean, std = list(CIFAR100_MEAN), list(CIFAR100_STD)
    else:
        mean, std = channel_stats(images[split == "train"])
    p = Prepared(name, images, noisy_labels, labels, noisy, sample_id, source, split, mean, std, n_classes)
    dup = dataset_cfg.get("near_duplicates", {})
    return plant_near_duplicates(p, dup.get("n", 0), dup.get("pixel_noise", 0.0), dup.get("seed", 0))


def synthetic_train_set(n_classes: int, shape, n: int, seed: int = 0) -> Prepared:
    """``n`` class-structured synthetic images (:func:`make_synthetic`), all in the train split
    (benchmarks of the training step and input pipeline)."""
    images, labels = make_synthetic(n_classes, shape, -(-n // n_classes), seed=seed)
    images, labels = images[:n], labels[:n]
    mean, std = channel_stats(images)
    return Prepared(
        name="synthetic",
        images=images,
        labels=labels,
        orig_labels=labels.copy(),
        noisy=np.zeros(n, dtype=bool),
        sample_id=np.arange(n),
        source=np.full(n, "train"),
        split=np.full(n, "train"),
        mean=mean,
        std=std,
        n_classes=n_classes,
    )


def save_prepared(p: Prepared, path, prov: dict) -> None:
    from memplast.integrity import check_archive
    from memplast.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                name=p.name,
                images=p.images,
                labels=p.labels,
                orig_labels=p.orig_labels,
                noisy=p.noisy,
                sample_id=p.sample_id,
                source=p.source.astype(str),
                split=p.split.astype(str),
                mean=np.asarray(p.mean),
                std=np.asarray(p.std),
                n_classes=p.n_classes,
                duplicate_of=p.duplicate_of,
                provenance_json=json.dumps(prov, default=str),
            )
        check_archive(tmp, "it was damaged while being written and is not kept (check the disk); rerun the job", path)


def load_prepared(path) -> Prepared:
    """The prepared dataset of :func:`save_prepared`, its archive checksums verified first."""
    from memplast.integrity import check_archive

    check_archive(path)
    with np.load(path, allow_pickle=False) as z:
        return Prepared(
            name=str(z["name"]),
            images=z["images"],
            labels=z["labels"],
            orig_labels=z["orig_labels"],
            noisy=z["noisy"],
            sample_id=z["sample_id"],
            source=z["source"].astype(object),
            split=z["split"].astype(object),
            mean=z["mean"].tolist(),
            std=z["std"].tolist(),
            n_classes=int(z["n_classes"]),
            duplicate_of=z["duplicate_of"] if "duplicate_of" in z.files else None,
        )


# --------------------------------------------------------------------------- class orders
def class_order(seed: int, n_classes: int, lop_compatible: bool = False) -> np.ndarray:
    """The permutation of classes for one run.

    ``lop_compatible`` reproduces the reference code: torch.manual_seed(42);
    seeds = torch.randperm(100000); run seed = seeds[index]; numpy seeded with it;
    numpy permutation of the classes. Here ``seed`` is that index.
    """
    if lop_compatible:
        import torch

        gen = torch.Generator().manual_seed(42)
        run_seed = int(torch.randperm(100000, generator=gen)[seed])
        return np.random.RandomState(run_seed).permutation(n_classes)
    return np.random.default_rng(seed).permutation(n_classes)


def class_order_table(order: np.ndarray, classes_per_task: int) -> pd.DataFrame:
    """position, class and the task (0-based) in which the class first appears."""
    return pd.DataFrame(
        {"position": np.arange(len(order)), "class": order, "task": np.arange(len(order)) // classes_per_task}
    )
