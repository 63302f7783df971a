"""The rehearsal at paper shapes (config/rehearsal.yaml, README "Rehearsal at paper shapes"), cut to
5 tasks and base/retrained (tests/data/rehearsal_ci.yaml): a generated CIFAR-100-format archive
through the real download/checksum/extract/split path, 100 classes, ResNet-18 on 32x32x3, every
curvature method over 100 classes, probes, statistics, figures and the report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from memplast import config as mpconfig
from memplast import data

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CONFIGS = [str(ROOT / p) for p in ("config.yaml", "config/rehearsal.yaml", "tests/data/rehearsal_ci.yaml")]
RUN = "results/runs/order0/none/random/none/base"


def _snakemake(workdir: Path, *extra):
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "-c2"]
    out = subprocess.run([*cmd, "--configfile", *CONFIGS, *extra], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rehearsal")
    _snakemake(workdir)
    _snakemake(workdir, "--report", "results/report.html")
    return workdir


@pytest.mark.slow
def test_rehearsal_reads_the_archive_through_the_real_path(rehearsal):
    cfg = mpconfig.load(*CONFIGS)
    gen = cfg["dataset"]["generated"]
    # the archive was generated, "downloaded" from its file: URL and matches the pinned checksum
    assert data.md5sum(rehearsal / "data/cifar100/raw/archive.tar.gz") == cfg["dataset"]["md5"]
    p = data.load_prepared(rehearsal / "data/cifar100/prepared.npz")
    assert p.n_classes == 100 and p.images.shape[1:] == (3, 32, 32)
    train_file = p.source == "train"
    assert train_file.sum() == 100 * gen["train_per_class"] and (~train_file).sum() == 100 * gen["test_per_class"]
    for split, per_class in (("val", cfg["dataset"]["n_val_per_class"]), ("test", gen["test_per_class"])):
        assert (np.bincount(p.labels[p.split == split], minlength=100) == per_class).all()
    order = pd.read_csv(rehearsal / "results/class_orders/order0.csv", comment="#")
    np.testing.assert_array_equal(order["class"], data.class_order(0, 100, lop_compatible=True))


@pytest.mark.slow
def test_rehearsal_scores_and_probes_at_100_classes(rehearsal):
    prepared = data.load_prepared(rehearsal / "data/cifar100/prepared.npz")
    scores = pd.read_parquet(rehearsal / "results/memo/scores.parquet")
    # every curvature estimator scored every train and validation sample of all 100 classes
    assert set(scores["split"]) == {"train", "val"} and len(scores) == (prepared.split != "test").sum()
    for col in ("curv_exact", "curv_hutch", "curv_fd"):
        assert np.isfinite(scores[col]).all() and (scores[col] > 0).all(), col
    # CSL sums the scorer's training losses: defined for the training samples only
    train = scores["split"] == "train"
    assert (scores.loc[train, "csl"] > 0).all() and scores.loc[~train, "csl"].isna().all()
    order = data.class_order(0, 100, lop_compatible=True)
    for k in range(4):  # 5 tasks: boundaries 0..3, each with the training samples of the classes seen at k+1
        probes = pd.read_parquet(rehearsal / RUN / f"probes/boundary{k}.parquet")
        assert set(probes["label"]) == set(order[: 5 * (k + 2)])
        np.testing.assert_array_equal(probes["is_old"], probes["label"].isin(order[: 5 * (k + 1)]))
    deltas = pd.read_parquet(rehearsal / RUN / "deltas.parquet")
    assert set(deltas["boundary"]) == {0, 1, 2, 3} and deltas.loc[deltas.is_old, "d_loss"].notna().all()


@pytest.mark.slow
def test_rehearsal_ends_in_tables_figures_and_report(rehearsal):
    summaries = pd.read_parquet(rehearsal / "results/stats/run_summaries.parquet")
    assert set(summaries["algorithm"]) == {"base", "retrained"} and set(summaries["task"]) == set(range(5))
    for name in ("memo_vs_dgrad", "memo_vs_dloss", "plasticity_gap", "accuracy_curves"):
        assert (rehearsal / f"results/figures/{name}.pdf").stat().st_size > 1000, name
    gap = pd.read_csv(rehearsal / "results/stats/plasticity_gap.csv", comment="#")
    assert set(gap["task"]) == set(range(5))
    report = (rehearsal / "results/report.html").read_text(errors="ignore")
    assert "memo_vs_dgrad" in report and len(report) > 100_000
