"""Config schema and cross-key checks: defaults are filled, bad values give readable one-line errors."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

from memplast import config as mpconfig
from memplast import grid
from memplast.config import ConfigError


def load(**overrides):
    return mpconfig.load(ROOT / "config.yaml", overrides=overrides)


def test_paper_defaults_match_the_protocol(paper_config):
    p = paper_config["protocol"]
    assert paper_config["dataset"]["name"] == "cifar100" and paper_config["model"]["arch"] == "resnet18"
    assert (p["classes_per_task"], p["n_tasks"], p["epochs_per_task"], p["batch_size"]) == (5, 20, 200, 90)
    assert (p["lr"], p["momentum"], p["weight_decay"]) == (0.1, 0.9, 0.0005)
    assert p["lr_milestones"] == [60, 120, 160] and p["lr_gamma"] == 0.2 and p["early_stopping"]
    assert paper_config["dataset"]["n_val_per_class"] == 50
    assert paper_config["class_orders"]["seeds"] == [0, 1, 2, 3, 4]


def test_schema_fills_defaults_for_a_minimal_config():
    cfg = mpconfig.validate({"dataset": {"name": "digits"}, "protocol": {"classes_per_task": 2, "n_tasks": 5}})
    assert cfg["memo"]["scorer"]["grid_every"] == 4
    assert cfg["probes"]["taus"] == [0.0, 0.001, 0.01]
    assert cfg["conditions"]["primary"] == {
        "filter": "none",
        "ordering": "random",
        "weighting": "none",
        "algorithm": "base",
    }


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dataset": {"name": "mnist"}}, r"'mnist' for 'dataset.name': allowed values are \['cifar100'"),
        ({"protocol": {"classes_per_task": 7}}, r"classes_per_task=7 does not divide the 100 classes"),
        ({"protocol": {"epochs_per_task": -1}}, r"'protocol.epochs_per_task': -1 is less than the minimum of 1"),
        (
            {"conditions": {"filters": ["none", "per_class-q1.5"]}},
            r"'per_class-q1.5' for 'conditions.filters.1'.*0 < Q <= 1",
        ),
        ({"conditions": {"filters": ["none", "global-q0"]}}, r"'global-q0' for 'conditions.filters.1'"),
        ({"conditions": {"orderings": ["random", "sideways"]}}, r"'sideways' for 'conditions.orderings.1': allowed"),
        ({"protocol": {"n_tasks": 30}}, r"n_tasks=30 x classes_per_task=5 exceeds the 100 classes"),
        ({"protocol": {"lr_milestones": [60, 250]}}, r"lr_milestones \[250\] must be below epochs_per_task=200"),
        (
            {"conditions": {"primary": {"filter": "global-q0.5"}}},
            r"primary.filter='global-q0.5' is not in conditions.filters",
        ),
        (
            {"memo": {"score": "hutchinson", "methods": ["exact_ggn"]}},
            r"memo.score='hutchinson' is not among memo.methods",
        ),
        ({"modle": {}}, r"invalid config key under '<top level>'"),
        ({"weighting": {"lo": 2.5, "hi": 2.0}}, r"weighting.lo=2.5 must be below weighting.hi=2.0"),
        ({"weighting": {"lo": 1.0, "hi": 1.0}}, r"weighting.lo=1.0 must be below weighting.hi=1.0"),
        (
            {"protocol": {"epochs_per_task": 12, "lr_milestones": [4], "state_every": 12}},
            r"protocol.state_every=12 is not below protocol.epochs_per_task=12.*use at most 11",
        ),
        ({"stats": {"outcomes": ["d_loss", "d_los"]}}, r"stats.outcomes \['d_los'\]: not an outcome column"),
        ({"stats": {"outcomes": ["d_dormant_t0.5"]}}, r"stats.outcomes \['d_dormant_t0.5'\].*probes.taus"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(**overrides)
    assert "\n" not in str(info.value)


def test_outcomes_follow_the_probe_thresholds_and_short_tasks_need_no_resume_state():
    cfg = load(
        probes={"taus": [0.5]}, stats={"outcomes": ["d_dormant_t0.5", "d_dormant_score_t0.1_rollback", "align_cos"]}
    )
    assert cfg["stats"]["outcomes"][0] == "d_dormant_t0.5"
    load(
        protocol={"epochs_per_task": 1, "lr_milestones": [], "state_every": 10}, probes={"window": 1}
    )  # one epoch: nothing to resume


def test_quantile_one_is_allowed():
    load(conditions={"filters": ["none", "per_class-q1", "global-q0.95"]})
    assert grid.parse_filter("per_class-q1").quantile == 1.0


def test_conditions_one_at_a_time_and_factorial(paper_config, demo_config):
    conds = grid.conditions(paper_config)
    assert conds[0] == paper_config["conditions"]["primary"]
    # one at a time: every non-primary condition differs from the primary in exactly one factor
    for c in conds[1:]:
        assert sum(c[f] != conds[0][f] for f in grid.FACTORS) == 1
    # 2 memo filters + their 2 size-matched random controls, 3 orderings (fixed among them), retrained
    assert len(conds) == 1 + 2 * 2 + 3 + 0 + 1
    filters = [c["filter"] for c in conds]
    for f in paper_config["conditions"]["filters"][1:]:
        assert grid.random_control(f) in filters
    assert "fixed" in [c["ordering"] for c in conds]
    no_controls = {**paper_config["conditions"], "random_filter_controls": False}
    assert len(grid.conditions({**paper_config, "conditions": no_controls})) == len(conds) - 2
    demo = grid.conditions(demo_config)
    assert len(demo) == 2 * 2 + 1 and demo[0]["filter"] == "none" and demo[0]["ordering"] == "random"
    assert [c for c in demo if c["algorithm"] == "retrained"] == [{**demo[0], "algorithm": "retrained"}]
    full = grid.conditions({**demo_config, "conditions": {**demo_config["conditions"], "design": "factorial"}})
    assert len(full) == 2 * 2 * 2 and len({tuple(c.values()) for c in full}) == 8


def test_parse_factor_names():
    assert grid.parse_filter("balanced-q0.8") == grid.FilterSpec("balanced", 0.8)
    assert grid.parse_filter("per_class_random-q0.9") == grid.FilterSpec("per_class", 0.9, random=True)
    assert grid.random_control("global-q0.8") == "global_random-q0.8"
    assert grid.parse_weighting("alpha0.5") == 0.5 and grid.parse_weighting("none") == 0.0
    with pytest.raises(ConfigError):
        grid.parse_filter("per_class-q0")


def test_demo_overlay_is_valid_yaml_and_small():
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    assert demo["dataset"]["name"] == "digits"
    assert demo["protocol"]["epochs_per_task"] <= 20


@pytest.mark.parametrize(
    "text, where",
    [("protocol:\n  epochs_per_task: [1, 2\n  n_tasks: 3\n", "line 3"), ("a: 1\n\tb: 2\n", "line 2, column 1")],
)
def test_yaml_syntax_error_names_file_and_line(tmp_path, text, where, capsys):
    bad = tmp_path / "overlay.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        mpconfig.load(ROOT / "config.yaml", bad)
    msg = str(info.value)
    assert msg.startswith(f"{bad}, {where}") and "YAML syntax error" in msg and "\n" not in msg
    assert mpconfig.main([str(bad)]) == 1 and str(bad) in capsys.readouterr().err
    assert mpconfig.main([str(ROOT / "config" / "demo.yaml")]) == 0
