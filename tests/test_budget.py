"""The budget (memplast/budget.py, scripts/budget.py): jobs and resources parsed from Snakemake's
dry run, GPU-hours equal to the config's runtime model, checkpoint sizes equal to real files."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

from memplast import budget, cost
from memplast import config as mpconfig
from memplast.checkpoints import save_checkpoint
from memplast.models import build_model

DRY_RUN = """\
[Mon Nov 30 12:20:33 2026]
rule train_task:
    input: a.npz
    output: results/runs/order0/none/random/none/base/task0/end.pt, results/runs/order0/none/random/none/base/task0/ckpt/te1.pt
    jobid: 3
    wildcards: seed=0, filter=none, ordering=random, weighting=none, algorithm=base, task=0
    resources: tmpdir=/tmp, runtime=130, gpu=1, mem_mb=2000, mem=2 GB, mem_mib=1908

group job probes (jobs in lexicogr. order):

    [Mon Nov 30 12:20:33 2026]
    rule probe:
        output: results/runs/order0/none/random/none/base/probes/boundary0.parquet
        wildcards: seed=0, filter=none, ordering=random, weighting=none, algorithm=base, boundary=0
        resources: tmpdir=/tmp, runtime=30, gpu=2, mem_mb=2000, mem=2 GB, mem_mib=1908
[Mon Nov 30 12:20:33 2026]
localrule stats_primary:
    output: results/stats/per_boundary.csv
    resources: tmpdir=/tmp, runtime=60, mem_mb=4000, mem=4 GB, mem_mib=3815
localrule all:
    input: x
"""


def test_parse_jobs_reads_grouped_and_local_jobs():
    jobs = budget.parse_jobs(DRY_RUN)
    assert [j["rule"] for j in jobs] == ["train_task", "probe", "stats_primary", "all"]
    assert jobs[0]["output"][1].endswith("ckpt/te1.pt") and jobs[0]["resources"]["runtime"] == 130
    assert jobs[1]["resources"]["gpu"] == 2 and jobs[2]["resources"]["tmpdir"] == "/tmp"
    assert jobs[0]["wildcards"] == {
        "seed": "0", "filter": "none", "ordering": "random", "weighting": "none", "algorithm": "base", "task": "0"
    }  # fmt: skip


def test_summary_hours_and_disk_kinds(demo_config):
    sizes = budget.Sizes(demo_config)
    model = cost.CostModel(demo_config)
    s = budget.summarize(budget.parse_jobs(DRY_RUN), sizes, model)
    train = s["rules"]["train_task"]
    assert train == {"jobs": 1, "gpu_hours": pytest.approx(130 / 60), "cpu_hours": 0.0,
                     "estimated_hours": pytest.approx(model.train(0) / 3600)}  # fmt: skip
    assert s["rules"]["stats_primary"]["estimated_hours"] is None  # not a GPU rule: no cost-model estimate
    assert s["rules"]["probe"]["gpu_hours"] == pytest.approx(2 * 30 / 60)
    assert s["rules"]["stats_primary"]["cpu_hours"] == pytest.approx(1.0) and "all" not in s["rules"]
    assert s["disk"]["window checkpoints"] == sizes.weights
    assert s["disk"]["task-end states"] == sizes.weights + sizes.params
    per_class, cpt, w = sizes.per_class, demo_config["protocol"]["classes_per_task"], demo_config["probes"]["window"]
    assert s["disk"]["probe tables"] == 2 * cpt * per_class * 2 * w * budget.PROBE_ROW_BYTES


@pytest.mark.parametrize("arch,width", [("small_cnn", 16), ("resnet18", 8)])
def test_checkpoint_size_matches_a_saved_checkpoint(tmp_path, arch, width):
    weights, params = budget.model_bytes(arch, 10, 3, width)
    model = build_model(arch, 10, 3, width)
    assert params == 4 * sum(p.numel() for p in model.parameters())
    save_checkpoint(tmp_path / "c.pt", model, {"arch": arch}, {"p": 1})
    size = (tmp_path / "c.pt").stat().st_size
    assert weights <= size < weights * 1.1 + 40_000  # torch.save adds names and a zip header


@pytest.mark.slow
@pytest.mark.parametrize("probe_jobs,unused", [("boundary", "probe_run"), ("run", "probe")])
def test_gpu_hours_follow_the_cost_model(tmp_path, demo_config, probe_jobs, unused):
    """GPU-hours of the demo with gpu: 1 everywhere = the cost model's requests summed over the jobs
    Snakemake plans (so every rule's request is 1.5-2x its estimate), and the table says so; with
    either probe rule (probes.jobs)."""
    overlay = tmp_path / "gpu.yaml"
    resources = {f: {"gpu": 1} for f in ("train", "memo_scorer", "curvature", "probe")}
    overlay.write_text(yaml.safe_dump({"resources": resources, "probes": {"jobs": probe_jobs}}))
    cfg = mpconfig.load(ROOT / "config.yaml", ROOT / "config" / "demo.yaml", overlay)
    jobs = budget.dry_run([ROOT / "config.yaml", ROOT / "config" / "demo.yaml", overlay])
    model = cost.CostModel(cfg)
    s = budget.summarize(jobs, budget.Sizes(demo_config), model)
    p = demo_config["protocol"]
    planned = {j["rule"] for j in jobs}
    assert set(cost.RULES) - planned == {"tune_task", unused}  # tuning runs only as the `tune` target
    for rule in set(cost.RULES) & planned:
        mine = [j for j in jobs if j["rule"] == rule]
        want = sum(model.minutes(rule, j["wildcards"]) for j in mine) / 60
        r = s["rules"][rule]
        assert r["gpu_hours"] == pytest.approx(want), rule
        assert 1.5 <= r["gpu_hours"] / r["estimated_hours"] <= 2.0, (rule, r)
    runs = len([j for j in jobs if j["rule"] in ("train_task", "train_task_reference")]) // p["n_tasks"]
    assert runs == 10
    table = budget.format_table("demo", s)
    assert "estimated total of the GPU rules (cost model)" in table
    # the retrained references save one checkpoint per task; the probed runs the first w epochs and
    # the end (by number), w before-window slots and the live last epoch: 2 w + 2
    n_ref = s["rules"]["train_task_reference"]["jobs"]
    n_probed = s["rules"]["train_task"]["jobs"]
    w = demo_config["probes"]["window"]
    assert s["disk"]["window checkpoints"] == pytest.approx(
        (n_ref + n_probed * (2 * w + 2)) * budget.Sizes(demo_config).weights
    )
