"""The cost model (memplast/cost.py), the calibration (memplast/calibrate.py, scripts/calibrate.py)
and the GPU check (memplast/gpu_check.py, scripts/gpu_check.py, run on the CPU)."""

from __future__ import annotations

import copy
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT

from memplast import config as mpconfig
from memplast import cost, data, grid

sys.path.insert(0, str(ROOT / "scripts"))

TINY = [ROOT / "config.yaml", ROOT / "config" / "demo.yaml", ROOT / "tests" / "data" / "tiny.yaml"]


def planted_calibration(config: dict) -> dict:
    """Distinct powers of two per operation, so that every count shows in the total."""
    ops = ["train_step", *[k for k in cost.OPERATIONS if k != "train_step"]]
    return {
        "device": "planted",
        "source": "test",
        "shapes": cost.shapes(config),
        "seconds_per_image": {k: 2.0**-i for i, k in enumerate(ops)},
        "algorithm_factor": {"cbp": 3.0},
        "fixed_seconds": {"startup": 7.0, "checkpoint_load": 0.5},
    }


def test_calls_smaller_than_a_batch_cost_what_the_call_curve_says(paper_config):
    """An evaluation of 2,500 images at batch 1000: two full calls at the batch value and one of 500
    read off the curve (call seconds linear between its sizes: 128 x 1 ms and 1000 x 3 ms), checked
    against the sum written out; without a curve every image costs the batch value."""
    cal = planted_calibration(paper_config)
    cal["seconds_per_image"]["eval"] = 0.003
    flat = cost.CostModel(paper_config, copy.deepcopy(cal))
    cal["call_curve"] = {"eval": [[2, 0.004], [128, 0.001], [1000, 0.003]]}
    model = cost.CostModel(paper_config, cal)
    assert paper_config["protocol"]["eval_batch_size"] == 1000
    t500 = 0.128 + (3.0 - 0.128) * (500 - 128) / (1000 - 128)  # seconds of a call of 500 images
    assert model.evaluation(2500) == pytest.approx(2 * 1000 * 0.003 + t500)
    assert model.per_image("eval", 1) == 0.004 and model.per_image("eval", 1000) == 0.003
    assert flat.evaluation(2500) == pytest.approx(2500 * 0.003)
    assert model.evaluation(300, batch=100) == pytest.approx(3 * (0.004 * 2 + (0.128 - 0.008) * 98 / 126))


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_split_sizes_match_a_prepared_dataset(demo_config, name):
    ds = copy.deepcopy(demo_config["dataset"])
    ds["name"] = name
    ds["near_duplicates"] = {**ds["near_duplicates"], "n": 0}  # extra held-out copies: not in the split sizes
    ds["synthetic"] = {**ds["synthetic"], "n_classes": 4, "shape": [1, 4, 4], "n_per_class": 50}
    p = data.prepare(ds)
    sizes = grid.split_sizes(ds)
    for split in ("train", "val", "test"):  # digits' classes differ in size: the mean is what counts
        per_class = np.bincount(p.orig_labels[p.split == split], minlength=p.n_classes)  # before label noise
        assert abs(per_class.mean() - sizes[split]) <= 1.5, (split, per_class, sizes[split])


def test_cifar_split_sizes(paper_config):
    assert grid.split_sizes(paper_config["dataset"]) == {"train": 450, "val": 50, "test": 100}
    # the rehearsal's generated archive: its own train and test files, not CIFAR-100's 500 / 100 per class
    rehearsal = mpconfig.load(ROOT / "config.yaml", ROOT / "config" / "rehearsal.yaml")["dataset"]
    generated = rehearsal["generated"]
    assert grid.split_sizes(rehearsal) == {
        "train": generated["train_per_class"] - rehearsal["n_val_per_class"],
        "val": rehearsal["n_val_per_class"],
        "test": generated["test_per_class"],
    }


def test_training_counts_epochs_evaluation_and_bn_reestimation(paper_config):
    """Independent restatement of a task's work, image by image, with a planted calibration."""
    cal = planted_calibration(paper_config)
    m = cost.CostModel(paper_config, cal)
    c, p = cal["seconds_per_image"], paper_config["protocol"]
    task, E = 3, p["epochs_per_task"]
    classes = (task + 1) * p["classes_per_task"]
    per_epoch = classes * 450 * c["train_step"] + classes * 150 * c["eval"]
    want = 7.0 + E * per_epoch + classes * 150 * c["eval"]
    assert m.train(task, "random", "base") == pytest.approx(want)
    # a non-random ordering re-estimates BatchNorm on every epoch; a filter keeps q of the images
    assert m.train(task, "ascending") - m.train(task) == pytest.approx(E * classes * 450 * c["bn"])
    assert m.train(task, "random", "cbp") - m.train(task) == pytest.approx(2 * E * classes * 450 * c["train_step"])
    kept = m.train(task, filter_name="per_class-q0.8") - 7.0 - (E + 1) * classes * 150 * c["eval"]
    assert kept == pytest.approx(0.8 * E * classes * 450 * c["train_step"])
    off = copy.deepcopy(paper_config)
    off["ordering"]["bn_reestimate"] = False
    assert cost.CostModel(off, cal).train(task, "ascending") == pytest.approx(m.train(task))


def test_probe_curvature_scorer_and_summary_counts(paper_config):
    cal = planted_calibration(paper_config)
    m = cost.CostModel(paper_config, cal)
    c, w = cal["seconds_per_image"], paper_config["probes"]["window"]
    k = 4
    n = (k + 2) * 5 * 450
    probe = 7.0 + (2 * w + 1) * 0.5 + n * (2 * w * c["probe"] + c["probe_align"]) + 5 * 450 * c["mean_gradient"]
    assert m.probe(k) == pytest.approx(probe)
    # probes.curvature adds the exact GGN under the 30 classes of task k+1 at every checkpoint
    curv = copy.deepcopy(paper_config)
    curv["probes"]["curvature"] = True
    per_image = c["exact_ggn_task"] + (c["exact_ggn"] - c["exact_ggn_task"]) * (30 - 5) / (100 - 5)
    assert cost.CostModel(curv, cal).probe(k) - m.probe(k) == pytest.approx((2 * w + 1) * n * per_image)
    methods = c["exact_ggn"] + c["hutchinson"] + c["finite_difference"]
    assert m.curvature() == pytest.approx(7.5 + 100 * (450 + 50) * methods)
    assert m.scorer() == pytest.approx(7.0 + 200 * 100 * (450 * c["scorer_step"] + 150 * c["eval"]))
    seen = sum(5 * (t + 1) for t in range(20))
    # per task: metrics on the seen training images, the batch-statistics pass on 1000 of them (one
    # forward of the batch for its statistics, priced as an evaluation, then the metrics), test accuracy
    batch_stats = 20 * 1000 * (c["summary"] + c["eval"])
    summary = 7.0 + 20 * 0.5 + seen * (450 * c["summary"] + 100 * c["eval"]) + batch_stats
    assert m.summary() == pytest.approx(summary)
    # with 5 training images per class, the batch-statistics pass takes the 25 (t + 1) seen, not 1000
    from memplast import model_metrics

    assert cost.FAITHFUL_BATCH == model_metrics.FAITHFUL_BATCH
    m.sizes = {**m.sizes, "train": 5}
    few = 7.0 + 20 * 0.5 + seen * (5 * c["summary"] + 100 * c["eval"]) + seen * 5 * (c["summary"] + c["eval"])
    assert m.summary() == pytest.approx(few)


def test_each_job_pays_the_first_calls_of_its_operations_and_the_lazy_import_where_it_happens(paper_config):
    """Planted first-call excesses (distinct powers of two) and lazy import: each job kind's estimate
    rises by exactly those of the operations it runs; the lazy import (torch.optim, pred_forget's
    forward-mode pass) only for training, scorer and probe jobs."""
    base = planted_calibration(paper_config)
    cal = copy.deepcopy(base)
    ops = [*cost.OPERATIONS, "step cbp"]
    cal["warmup_seconds"] = {k: 2.0**i for i, k in enumerate(ops)}
    cal["fixed_seconds"]["lazy_import"] = 2.0**20
    w, lazy = cal["warmup_seconds"], 2.0**20
    a, b = cost.CostModel(paper_config, base), cost.CostModel(paper_config, cal)
    want = {
        ("train_task", "base", "random"): lazy + w["train_step"] + w["eval"],
        ("train_task", "retrained", "ascending"): lazy + w["train_step"] + w["eval"] + w["bn"],
        ("train_task", "cbp", "random"): lazy + w["step cbp"] + w["eval"],
        ("tune_task", "cbp", "random"): lazy + w["step cbp"] + w["eval"],
        ("probe", None, None): lazy + w["probe"] + w["probe_align"] + w["mean_gradient"],
        ("memo_scorer", None, None): lazy + w["scorer_step"] + w["eval"],
        ("memo_curvature", None, None): w["exact_ggn"] + w["hutchinson"] + w["finite_difference"],
        ("run_summary", None, None): w["summary"] + w["eval"],
        ("heldout", "base", None): w["eval"],
        ("heldout_dependence", None, None): w["eval"],
    }
    for (rule, algorithm, ordering), extra in want.items():
        wc = {"task": 3, "boundary": 3, "algorithm": algorithm, "ordering": ordering}
        assert b.seconds(rule, wc) - a.seconds(rule, wc) == pytest.approx(extra), rule
    assert b.seconds("probe_run", {}) - a.seconds("probe_run", {}) == pytest.approx(want["probe", None, None])
    curv = copy.deepcopy(paper_config)
    curv["probes"]["curvature"] = True  # memo.score's estimator: its first call too
    extra = cost.CostModel(curv, cal).probe(3) - cost.CostModel(curv, base).probe(3)
    assert extra == pytest.approx(want["probe", None, None] + w[paper_config["memo"]["score"]])


def test_start_up_and_lazy_import_are_medians_over_fresh_interpreters(tmp_path):
    """measure_fixed with a stand-in interpreter that reports, per call, the CPU seconds to the end of
    its imports and of the lazy import: the medians of three calls, not the first or the mean."""
    from memplast.calibrate import Bench, Timer, measure_fixed

    reports, count = ["0.5 0.2", "3.0 0.9", "0.7 0.3"], tmp_path / "count"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}\n"
        f'case $n in 0) echo "{reports[0]}";; 1) echo "{reports[1]}";; *) echo "{reports[2]}";; esac\n'
    )
    fake.chmod(0o755)
    cfg = mpconfig.load(*TINY)
    fixed = measure_fixed(Bench(cfg, torch.device("cpu")), Timer(torch.device("cpu"), 0.2, "cpu"), str(fake))
    assert count.read_text().strip() == "3"
    assert fixed["startup"] == pytest.approx(0.7) and fixed["lazy_import"] == pytest.approx(0.3)
    assert fixed["checkpoint_load"] > 0


def test_a_probe_job_per_run_costs_its_boundaries_with_one_start_up(paper_config):
    """probes.jobs: run: the 19 boundaries' probe jobs of a run in one process, the start-up paid once."""
    m = cost.CostModel(paper_config, planted_calibration(paper_config))
    for wc in ({}, {"filter": "per_class-q0.8"}):
        each = [m.seconds("probe", {**wc, "boundary": k}) for k in range(19)]
        assert m.seconds("probe_run", wc) == pytest.approx(sum(each) - 18 * 7.0)
        assert m.minutes("probe_run", wc) == math.ceil(1.5 * m.seconds("probe_run", wc) / 60)


def test_tuning_and_heldout_counts(paper_config):
    """A tuning task evaluates no test split; the held-out job evaluates the seen classes' validation
    and test images at every checkpoint a run keeps (rules/common.smk heldout_checkpoints)."""
    cal = planted_calibration(paper_config)
    m = cost.CostModel(paper_config, cal)
    c, E, w = cal["seconds_per_image"], paper_config["protocol"]["epochs_per_task"], paper_config["probes"]["window"]
    tune = m.seconds("tune_task", {"algorithm": "cbp", "point": "3", "seed": "100", "task": "3"})
    assert tune == pytest.approx(m.train(3, "random", "cbp") - (E + 1) * 20 * 100 * c["eval"])
    one_checkpoint_per_task = 20 * 0.5 + sum((t + 1) * 5 * 150 for t in range(20)) * c["eval"]
    assert m.seconds("heldout", {"algorithm": "base"}) == pytest.approx(7.0 + (2 * w + 2) * one_checkpoint_per_task)
    assert m.heldout("retrained") == pytest.approx(7.0 + one_checkpoint_per_task)
    extra = copy.deepcopy(paper_config)
    extra["probes"]["extra_epochs"] = [w + 5, E]  # one more saved epoch; the end is saved anyway
    assert cost.CostModel(extra, cal).heldout() - m.heldout() == pytest.approx(one_checkpoint_per_task)


def test_requests_of_the_default_config_are_within_2x_of_the_estimate(paper_config):
    """Every GPU job of the paper config asks for the safety factor x its estimate, at most 2x."""
    m = cost.CostModel(paper_config)
    assert m.device.startswith("default") and m.safety == 1.5
    jobs = [("train_task", {"task": t, "ordering": o, "algorithm": "base"}) for t in range(20) for o in grid.ORDERINGS]
    jobs += [("probe", {"boundary": k}) for k in range(19)]
    jobs += [("probe_run", {"filter": f}) for f in ("none", "per_class-q0.8")]
    jobs += [("memo_scorer", {}), ("memo_curvature", {}), ("run_summary", {})]
    for rule, wc in jobs:
        estimate = m.seconds(rule, wc) / 60
        ratio = m.minutes(rule, wc) / estimate
        assert 1.5 <= ratio <= 2.0, (rule, wc, estimate, m.minutes(rule, wc))
        assert m.minutes(rule, wc, attempt=2) == 2 * m.minutes(rule, wc)


def test_default_calibration_scales_with_seconds_per_image(paper_config):
    fast = copy.deepcopy(paper_config)
    fast["resources"]["train"]["seconds_per_image"] /= 2
    a, b = cost.CostModel(paper_config), cost.CostModel(fast)
    startup = cost.DEFAULT_FIXED["startup"] + cost.DEFAULT_FIXED["checkpoint_load"]
    assert b.curvature() - startup == pytest.approx((a.curvature() - startup) / 2)


def test_calibration_of_other_shapes_is_refused(tmp_path, paper_config, demo_config):
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(planted_calibration(demo_config)))
    assert cost.load_calibration(path, demo_config)["source"] == str(path)
    with pytest.raises(cost.CalibrationError, match=r"other shapes .*image_shape: calibrated \[1, 8, 8\]"):
        cost.load_calibration(path, paper_config)
    with pytest.raises(cost.CalibrationError, match="not found; run `make calibrate`"):
        cost.load_calibration(tmp_path / "missing.yaml")
    broken = planted_calibration(demo_config)
    del broken["seconds_per_image"]["hutchinson"]
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(cost.CalibrationError, match=r"lacks \['hutchinson'\]"):
        cost.load_calibration(path, demo_config)


def test_calibrate_writes_a_file_the_cost_model_reads(tmp_path):
    """scripts/calibrate.py at the tiny test shapes: every operation measured, loadable for this config."""
    import calibrate as script

    out = script.main(["--configfile", *map(str, TINY), "--device", "cpu", "--out", str(tmp_path / "c.yaml"),
                       "--call-seconds", "0.2", "--clock", "cpu"])  # fmt: skip
    cfg = mpconfig.load(*TINY)
    cal = cost.load_calibration(out, cfg)
    assert set(cal["seconds_per_image"]) == set(cost.OPERATIONS)
    assert all(v > 0 and math.isfinite(v) for v in cal["seconds_per_image"].values())
    assert cal["clock"] == "cpu" and cal["fixed_seconds"]["startup"] > 0 and cal["fixed_seconds"]["lazy_import"] > 0
    assert set(cost.OPERATIONS) <= set(cal["warmup_seconds"]) and min(cal["warmup_seconds"].values()) >= 0
    cfg["resources"]["calibration"] = str(out)
    m = cost.CostModel(cfg)
    assert m.device == cal["device"] and m.train(0) > cal["fixed_seconds"]["startup"]


class FakeWork:
    """Calls of known cost on a fake clock: a + b * n seconds for n images, plus ``cold`` on the first."""

    def __init__(self, a: float, b: float, cold: float = 0.0):
        self.clock, self.a, self.b, self.cold, self.sizes = 0.0, a, b, cold, []

    def now(self) -> float:
        return self.clock

    def make_call(self, n: int):
        def call():
            self.clock += self.a + self.b * n + (self.cold if not self.sizes else 0.0)
            self.sizes.append(n)

        return call


def fake_timer(work: FakeWork, call_seconds: float = 1.0):
    from memplast.calibrate import Timer

    timer = Timer(torch.device("cpu"), call_seconds, "cpu")
    timer.now = work.now
    return timer


@pytest.mark.parametrize("cold", [0.0, 1.5])
def test_timer_grows_calls_to_the_budget_and_extrapolates_to_the_batch(cold):
    """Fixed + per-image cost a + b n: calls grow from the pilot to the largest size within
    call_seconds (a slow first call, the warm-up, does not stop the growth), one call of 4x that size
    follows, and the result is the cost per image of a call of the configured size, a / 500 + b, not
    of the largest timed one."""
    work = FakeWork(a=0.05, b=0.01, cold=cold)
    timer = fake_timer(work)
    per_image = timer.per_image("op", work.make_call, configured=500)
    assert timer.warmups["op"] == pytest.approx(cold)  # the first call's excess over a later one of its size
    n = work.sizes[-2]
    assert work.sizes[0] == 2 and work.sizes == sorted(work.sizes)
    assert 0.05 + 0.01 * n <= 1.0 < 2 * (0.05 + 0.01 * n)  # the last grown call fits, twice it would not
    assert n == 64 and work.sizes.count(n) == 2  # 64 disagrees with 16 (fixed cost): two calls of 64
    assert work.sizes[-1] == 4 * n
    assert per_image == pytest.approx(0.05 / 500 + 0.01)
    assert abs(per_image - (0.05 + 0.01 * n) / n) > 0.05 * per_image  # not the largest call's cost


def test_timer_repeats_only_what_disagrees():
    """A flat per-image cost stops once the last two sizes agree; a configured batch within the
    budget is timed as is; a call of twice call_seconds counts alone, a shorter slow one twice
    (each then followed by one larger call)."""
    flat = FakeWork(a=0.0, b=0.01)
    timer = fake_timer(flat)
    assert timer.per_image("flat", flat.make_call, 500) == pytest.approx(0.01)
    assert flat.sizes == [2, 2, 16, 64, 256] and timer.log["flat"] == {
        "images": 256,
        "calls": 5,
        "seconds": pytest.approx(3.40),
    }
    small = FakeWork(a=0.1, b=0.01)
    assert fake_timer(small).per_image("small", small.make_call, 10) == pytest.approx(0.02)
    assert small.sizes == [2, 2, 10, 10]
    for b, sizes in ((2.5, [2, 4]), (0.6, [2, 2, 6])):  # the last call: at most ~4 call_seconds
        slow = FakeWork(a=0.0, b=b)
        assert fake_timer(slow).per_image("slow", slow.make_call, 250) == pytest.approx(b)
        assert slow.sizes == sizes


def test_timer_extrapolates_a_slow_operations_per_call_cost():
    """The exact GGN at 100 classes on a CPU: a large per-call cost (0.3 s) and 0.2 s per image,
    so only 1-2 images fit a call: the cost per image at a batch of 250 is 0.3 / 250 + 0.2, where
    the calls of 2 images alone would say 0.35."""
    work = FakeWork(a=0.3, b=0.2)
    assert fake_timer(work).per_image("exact_ggn", work.make_call, 250) == pytest.approx(0.3 / 250 + 0.2)
    assert work.sizes == [2, 2, 2, 8]


def test_timer_reuses_the_same_calls():
    """An operation with an earlier one's key reuses its calls when they were the same (every timed
    size within its configured images and under both batch sizes), extrapolated to its own batch."""
    work = FakeWork(a=0.3, b=0.02)
    timer = fake_timer(work)
    first = timer.per_image("train_step", work.make_call, 180, key=("train", 90))
    assert first == pytest.approx(0.3 / 90 + 0.02) and max(work.sizes) < 90
    calls = len(work.sizes)
    assert timer.per_image("scorer_step", work.make_call, 256, key=("train", 128)) == pytest.approx(0.3 / 128 + 0.02)
    assert len(work.sizes) == calls and timer.log["scorer_step"]["same_as"] == "train_step"
    assert timer.warmups["scorer_step"] == timer.warmups["train_step"]
    timer.per_image("smaller", work.make_call, 40, key=("train", 20))  # timed sizes above 20: other calls
    timer.per_image("other", work.make_call, 180, key=("eval", 90))
    assert len(work.sizes) > calls + 4


@pytest.mark.slow
def test_gpu_check_on_the_cpu(capsys):
    """scripts/gpu_check.py --device cpu at the tiny shapes: every part runs and says ok."""
    import gpu_check as script

    ok = script.main(["--configfile", *map(str, TINY), "--device", "cpu", "--steps", "4", "--call-seconds", "0.2"])
    out = capsys.readouterr().out
    assert ok, out
    for part in ("[device]", "[determinism]", "[resume]", "[calibration]", "[throughput]"):
        assert part in out
    assert "bitwise equal" in out and "3 concurrent job(s)" in out and "gpu-check: all ok on cpu" in out


def write_benchmarks(root, seconds: dict) -> None:
    """Snakemake benchmark files (wall s = 4 x cpu_time) under ROOT/logs/benchmarks."""
    for rel, cpu in seconds.items():
        path = root / "logs" / "benchmarks" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{cpu * 4:.4f}\t0:00:01\t1.0\t{cpu:.4f}\n")


def test_bench_cost_model_reads_snakemake_benchmark_files(tmp_path, demo_config, capsys):
    """benchmarks/bench_cost_model.py: benchmark files mapped to rule and wildcards, measured over
    predicted, two settings (runs) in one table with the goal verdict and the summary line."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_cost_model as bench

    cal = planted_calibration(demo_config)
    cal["clock"] = "cpu"
    (tmp_path / "cal.yaml").write_text(yaml.safe_dump(cal))
    model = cost.CostModel(demo_config, cal)
    run = "order1/per_class-q0.9/ascending/none"
    write_benchmarks(tmp_path / "a", {
        f"train/{run}/retrained/task2.tsv": model.train(2, "ascending", "retrained", "per_class-q0.9") * 1.2,
        f"probe/{run}/base/boundary1.tsv": model.probe(1, "per_class-q0.9") * 0.5,
        f"probe/{run}/base/boundaries.tsv": model.probe_run("per_class-q0.9") * 0.8,  # probes.jobs: run
        "memo/curvature_e8.tsv": model.curvature() * 3.0,
        "stats/primary.tsv": 99.0,  # not a cost-model rule: ignored
    })  # fmt: skip
    tune = {"algorithm": "upgd", "point": "4", "seed": "101", "task": "1"}
    t1, t2 = model.seconds("tune_task", tune), model.seconds("tune_task", {**tune, "task": "2"})
    write_benchmarks(tmp_path / "b", {
        "tune/upgd/p4/order101/task1.tsv": t1 * 1.1,
        "tune/upgd/p4/order101/task2.tsv": t2 * 1.3,
        f"probe/{run}/base/heldout.tsv": model.heldout("base") * 0.9,
        "memo/heldout_dependence.tsv": model.dependence(),
    })  # fmt: skip
    # the job's own log: its last "done" line's exact CPU seconds replace the sampled cpu_time (1.1 x t1)
    log = tmp_path / "b" / "logs" / "tune" / "upgd" / "p4" / "order101" / "task1.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"2026-12-06 10:00:00,000 INFO memplast: done tune_task {{}} in 9.0 s, {5 * t1:.4f} CPU s\n"
                   "2026-12-06 10:00:01,000 INFO memplast: start tune_task {} with 1 thread(s)\n"
                   f"2026-12-06 10:00:09,000 INFO memplast: done tune_task {{}} in 9.0 s, {t1:.4f} CPU s\n")  # fmt: skip
    configs = f"{ROOT / 'config.yaml'},{ROOT / 'config' / 'demo.yaml'}"
    df = bench.main([f"--setting=a:{tmp_path / 'a'}:{configs}:{tmp_path / 'cal.yaml'}",
                     f"--setting=b:{tmp_path / 'b'}:{configs}:../cal.yaml"])  # relative: from ROOT  # fmt: skip
    got = {(r.setting, r.rule): (r.jobs, r.ratio, r.within) for r in df.itertuples()}
    assert got == {
        ("a", "train_task_reference"): (1, pytest.approx(1.2), "yes"),
        ("a", "probe"): (1, pytest.approx(0.5), "no"),
        ("a", "probe_run"): (1, pytest.approx(0.8), "yes"),
        ("a", "memo_curvature"): (1, pytest.approx(3.0), "no"),
        ("b", "tune_task"): (2, pytest.approx((t1 + 1.3 * t2) / (t1 + t2), rel=1e-3), "yes"),  # the rule's total
        ("b", "heldout"): (1, pytest.approx(0.9), "yes"),
        ("b", "heldout_dependence"): (1, pytest.approx(1.0), "yes"),
    }
    assert df.set_index("rule").loc["tune_task", "cpu_from_log"] == "1/2"
    probe = df.set_index("rule").loc["probe"]
    assert probe["measured_wall_s"] == pytest.approx(4 * probe["measured_cpu_s"], rel=1e-4)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (
        "summary: measured/predicted per rule: a 0.50-3.00, 2 outside (probe, memo_curvature); "
        f"b 0.90-{(t1 + 1.3 * t2) / (t1 + t2):.2f}, all within; 5/7 rules within the goal 1/1.5-1.5"
    )
    one = bench.main(["--configfile", *configs.split(","), "--calibration", str(tmp_path / "cal.yaml"),
                      "--benchmarks", str(tmp_path / "a" / "logs" / "benchmarks"), "--name", "a"])  # fmt: skip
    pd.testing.assert_frame_equal(one, df[df["setting"] == "a"])
    with pytest.raises(SystemExit, match="give NAME:ROOT:CONFIG"):
        bench.main(["--setting", "demo:config.yaml:/tmp/cal.yaml"])
