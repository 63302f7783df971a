"""Feldman & Zhang (NeurIPS 2020) CIFAR-100 memorization estimates, mapped onto our sample ids.

FZ publish ``cifar100_infl_matrix.npz`` with ``tr_mem`` (memorization of each training
image) and ``tr_labels`` in TensorFlow-Datasets order, which is not the order of the
python CIFAR-100 train file that our ``sample_id`` indexes. A mapping file gives, for each
TFDS position, the train-file index. Every mapped sample's label is checked against ours,
so a wrong mapping cannot pass silently.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from memplast.data import DataError, safe_unpickle

FZ_URL = "https://pluskid.github.io/influence-memorization/data/cifar100_infl_matrix.npz"


def load_fz_npz(path) -> dict:
    """{'tr_mem': float array, 'tr_labels': int array}, both in TFDS train order."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"tr_mem", "tr_labels"} - set(z.files)
        if missing:
            raise DataError(f"{path} has no {sorted(missing)}: not the Feldman-Zhang influence/memorization npz")
        fz = {
            "tr_mem": np.asarray(z["tr_mem"], dtype=np.float64),
            "tr_labels": np.asarray(z["tr_labels"], dtype=np.int64),
        }
    if fz["tr_mem"].shape != fz["tr_labels"].shape or fz["tr_mem"].ndim != 1:
        raise DataError(
            f"{path}: tr_mem {fz['tr_mem'].shape} and tr_labels {fz['tr_labels'].shape} must be equal-length vectors"
        )
    return fz


def _mapping_from_frame(frame: pd.DataFrame, path) -> pd.DataFrame:
    """Accept (tfds_id, sample_id) columns, or the CSL-Mem layout: a ``torch_id`` column whose
    row order (or ``tf_id``/``tfds_id`` column, or integer index) is the TFDS position."""
    if {"tfds_id", "sample_id"} <= set(frame.columns):
        tfds, ours = frame["tfds_id"], frame["sample_id"]
    elif "torch_id" in frame.columns:
        ours = frame["torch_id"]
        tf_cols = [c for c in ("tfds_id", "tf_id") if c in frame.columns]
        if tf_cols:
            tfds = frame[tf_cols[0]]
        elif pd.api.types.is_integer_dtype(frame.index.dtype):
            tfds = pd.Series(frame.index, index=frame.index)
        else:
            raise DataError(
                f"{path}: torch_id column found but the TFDS position is neither a column nor an integer index"
            )
    else:
        raise DataError(
            f"{path}: expected columns (tfds_id, sample_id) or a CSL-Mem torch_id column, got {list(frame.columns)}"
        )
    for name, col in (("tfds_id", tfds), ("sample_id", ours)):
        if not pd.api.types.is_integer_dtype(col.dtype):
            raise DataError(f"{path}: {name} must be integers, got dtype {col.dtype}")
    return pd.DataFrame({"tfds_id": tfds.to_numpy(np.int64), "sample_id": ours.to_numpy(np.int64)})


def load_mapping(path) -> pd.DataFrame:
    """DataFrame(tfds_id, sample_id) from a CSV with those columns or a pandas pickle.

    The pickle (CSL-Mem's ``tf_id_2_torch_id2.pkl``: a DataFrame whose ``torch_id`` column,
    in TFDS row order, is the index into the torchvision/python train file) is read with
    :func:`memplast.data.safe_unpickle`, which refuses any global that is not numpy/pandas data.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path)
    elif path.suffix.lower() in (".pkl", ".pickle"):
        try:
            frame = safe_unpickle(path.read_bytes())
        except Exception as exc:
            raise DataError(f"could not read {path} as a pandas pickle: {exc}") from exc
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"{path} holds a {type(frame).__name__}, not a pandas DataFrame")
    else:
        raise DataError(f"{path}: mapping must be .csv or .pkl/.pickle")
    return _mapping_from_frame(frame, path)


def map_fz_scores(fz: dict, mapping: pd.DataFrame, our_labels) -> pd.DataFrame:
    """DataFrame(sample_id, fz_mem) sorted by sample_id, after checking the mapping.

    ``our_labels``: the original (un-noised) label of each train-file image, as a Series
    indexed by sample_id or an array whose position is the sample_id. Raises ValueError
    if the mapping is not a bijection between all TFDS positions and distinct known sample
    ids, or if any tr_labels[tfds_id] != our label of sample_id (the count is in the message).
    """
    n = len(fz["tr_mem"])
    if not isinstance(our_labels, pd.Series):
        our_labels = pd.Series(np.asarray(our_labels), index=np.arange(len(our_labels)))
    tfds = mapping["tfds_id"].to_numpy(np.int64)
    ours = mapping["sample_id"].to_numpy(np.int64)

    problems = []
    if len(mapping) != n:
        problems.append(f"{len(mapping)} rows for {n} FZ samples")
    out_of_range = int(((tfds < 0) | (tfds >= n)).sum())
    if out_of_range:
        problems.append(f"{out_of_range} tfds_id outside [0, {n})")
    dup_tfds = int(pd.Series(tfds).duplicated().sum())
    if dup_tfds:
        problems.append(f"{dup_tfds} duplicated tfds_id")
    dup_ours = int(pd.Series(ours).duplicated().sum())
    if dup_ours:
        problems.append(f"{dup_ours} duplicated sample_id")
    unknown = int((~np.isin(ours, our_labels.index.to_numpy())).sum())
    if unknown:
        problems.append(f"{unknown} sample_id not among our samples")
    if problems:
        raise ValueError("Feldman-Zhang mapping is not a bijection: " + "; ".join(problems))

    disagree = fz["tr_labels"][tfds] != our_labels.loc[ours].to_numpy()
    if disagree.any():
        first = int(np.flatnonzero(disagree)[0])
        raise ValueError(
            f"Feldman-Zhang labels disagree with ours for {int(disagree.sum())} of {n} rows "
            f"(e.g. tfds_id {tfds[first]} has label {fz['tr_labels'][tfds[first]]}, "
            f"sample_id {ours[first]} has {our_labels.loc[ours[first]]}): wrong mapping or wrong labels"
        )
    frame = pd.DataFrame({"sample_id": ours, "fz_mem": fz["tr_mem"][tfds]})
    return frame.sort_values("sample_id", ignore_index=True)


def download_fz(url: str = FZ_URL, path="data/feldman_zhang/cifar100_infl_matrix.npz") -> Path:
    """Download the FZ npz to ``path`` (atomically) and check it has tr_mem and tr_labels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"could not download the Feldman-Zhang scores from {url} ({exc}); "
            f"without network access download it elsewhere and copy it to {path}"
        ) from exc
    try:
        load_fz_npz(tmp)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.rename(path)
    return path
