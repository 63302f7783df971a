"""Tuning before comparing (memplast/tuning.py, rules/tune.smk): grids, the budget and disjointness
checks, selection by validation accuracy only, tuning jobs that never see an evaluation order or a
test split, and the selection reaching the evaluation runs."""

from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT
from test_workflow import snakemake

from memplast import io, tuning
from memplast.grid import ConfigError

TUNE_TINY = [
    str(ROOT / "config.yaml"),
    str(ROOT / "config" / "demo.yaml"),
    str(ROOT / "tests" / "data" / "tune_tiny.yaml"),
]


def test_grid_points_are_the_product_in_key_order():
    pts = tuning.grid_points({"cbp.replacement_rate": [1e-4, 1e-5], "cbp.maturity_threshold": [10, 20, 30]})
    assert len(pts) == 6 and pts[0] == {"cbp.replacement_rate": 1e-4, "cbp.maturity_threshold": 10}
    assert pts[5] == {"cbp.replacement_rate": 1e-5, "cbp.maturity_threshold": 30}
    proto = tuning.with_values({"cbp": {"replacement_rate": 0.0, "mode": "reference"}, "upgd": {"lr": {"sgd": None}}},
                               {"cbp.replacement_rate": 0.5, "upgd.lr.sgd": 0.01})  # fmt: skip
    assert proto == {"cbp": {"replacement_rate": 0.5, "mode": "reference"}, "upgd": {"lr": {"sgd": 0.01}}}


def test_config_errors_name_overlapping_orders_unequal_budgets_and_unknown_keys(demo_config):
    cfg = copy.deepcopy(demo_config)
    cfg["tuning"]["seeds"] = [1, 100]  # demo evaluates orders 0 and 1
    with pytest.raises(ConfigError, match=r"tuning.seeds \[1\] are also evaluation class orders"):
        tuning.check_tuning(cfg)
    cfg = copy.deepcopy(demo_config)
    cfg["tuning"]["grids"]["cbp"] = {"cbp.replacement_rate": [1e-4]}
    with pytest.raises(ConfigError, match="different budgets"):
        tuning.check_tuning(cfg)
    cfg = copy.deepcopy(demo_config)
    cfg["tuning"]["grids"]["cbp"] = {"cbp.rate": [1, 2, 3, 4, 5, 6]}
    with pytest.raises(ConfigError, match=r"\['cbp.rate'\] are not keys of protocol"):
        tuning.check_tuning(cfg)


def test_tuning_data_has_no_test_split(digits):
    reduced = tuning.without_test(digits)
    assert (digits.split == "test").any() and not (reduced.split == "test").any()
    kept = digits.split != "test"
    assert np.array_equal(reduced.images, digits.images[kept]) and np.array_equal(
        reduced.sample_id, digits.sample_id[kept]
    )
    assert reduced.n_classes == digits.n_classes


def test_selection_follows_validation_accuracy_not_test():
    grid = {"cbp.replacement_rate": [0.1, 0.01, 0.001]}
    # point 2 has the best test accuracy, point 1 the best validation accuracy
    ends = pd.DataFrame([{"point": p, "seed": s, "task": t, "val_acc": v + 0.01 * t, "test_acc": te}
                         for p, v, te in ((0, 0.5, 0.6), (1, 0.7, 0.5), (2, 0.6, 0.9))
                         for s in (7, 8) for t in range(3)])  # fmt: skip
    table = tuning.grid_table(grid, ends)
    assert tuning.select(table) == 1
    assert table.loc[1, "mean_val_acc"] == pytest.approx(0.71) and table.loc[1, "n_cells"] == 6
    with pytest.raises(ValueError, match="no validation accuracy"):
        tuning.select(tuning.grid_table(grid, ends[ends.point != 2]))


def _job_inputs(stdout: str) -> dict:
    """rule -> list of the input lists of its jobs, from a dry run's job listing."""
    jobs, rule = {}, None
    for line in stdout.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):", line):
            rule = m.group(1)
            jobs.setdefault(rule, []).append([])
        elif rule and line.strip().startswith("input:"):
            jobs[rule][-1] = [p.strip() for p in line.split(":", 1)[1].split(",")]
    return jobs


def test_tuning_jobs_never_read_an_evaluation_order_or_run(tmp_path):
    out = snakemake("-n", "tune", "--directory", str(tmp_path), "--configfile", *TUNE_TINY)
    jobs = _job_inputs(out.stdout)
    assert len(jobs["tune_task"]) == 2 * 2 * 2 and len(jobs["tune_select"]) == 2
    inputs = [p for rule in ("tune_task", "tune_select", "class_order") for job in jobs[rule] for p in job]
    orders = {p for p in inputs if p.startswith("results/class_orders/")}
    assert orders == {"results/class_orders/order7.csv"}  # the tuning order only (evaluation: 0, 1)
    assert not [p for p in inputs if p.startswith("results/runs/") or "memo" in p]
    # with tuning.use, an evaluation run of a tuned algorithm trains from the selection
    use = tmp_path / "use.yaml"
    use.write_text("tuning: {use: true}\n")
    target = "results/runs/order0/none/random/none/cbp/task0/end.pt"
    out = snakemake("-n", target, "--directory", str(tmp_path), "--configfile", *TUNE_TINY, str(use))
    train = _job_inputs(out.stdout)["train_task"]
    assert "results/tuning/cbp.yaml" in train[0] and "tune_select" in out.stdout


@pytest.mark.slow
def test_tune_then_evaluate_with_the_selection(tmp_path):
    """The tiny tuning grid end to end (about a minute on 2 idle cores): per algorithm a selection by
    mean validation accuracy with the full grid table, tuning metrics without any test accuracy, and a
    cbp evaluation task whose protocol and provenance carry the selected values."""
    snakemake("tune", "--cores", "2", "--directory", str(tmp_path), "--configfile", *TUNE_TINY, timeout=900)
    for algorithm in ("shrink_perturb", "cbp"):
        record = yaml.safe_load((tmp_path / f"results/tuning/{algorithm}.yaml").read_text())
        table = pd.read_csv(tmp_path / f"results/tuning/{algorithm}.csv")
        assert len(record["grid"]) == len(table) == 2 and record["tuning_seeds"] == [7]
        assert record["point"] == int(table.loc[table["mean_val_acc"].idxmax(), "point"])
        metrics = pd.concat(
            pd.read_parquet(p) for p in (tmp_path / f"results/tuning/runs/{algorithm}").rglob("metrics.parquet")
        )
        assert metrics["test_acc"].isna().all() and metrics["val_acc"].notna().all()
    selected = yaml.safe_load((tmp_path / "results/tuning/cbp.yaml").read_text())["selected"]
    assert isinstance(selected["cbp.maturity_threshold"], int)  # the grid's own types, as the schema wants
    use = tmp_path / "use.yaml"
    use.write_text("tuning: {use: true}\n")
    run = "results/runs/order0/none/random/none/cbp/task0"
    snakemake(f"{run}/metrics.parquet", "--cores", "2", "--directory", str(tmp_path), "--configfile", *TUNE_TINY,
              str(use), timeout=600)  # fmt: skip
    prov = io.read_provenance(tmp_path / run / "metrics.parquet")
    assert prov["hyper_parameters"]["tuned"]
    for key, value in selected.items():
        assert prov["hyper_parameters"]["hyper_parameters"][key]["value"] == value
        assert tuning.with_values(prov["config"]["protocol"], {})["cbp"][key.split(".")[1]] == value
