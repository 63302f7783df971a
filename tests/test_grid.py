"""The run grid's vocabulary: wildcard patterns, parsers and the config schema agree; epoch arithmetic."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT

from memplast import config as mpconfig
from memplast import grid

GOOD = {
    "filter": ["none", "global-q0.8", "per_class-q0.9", "balanced-q1", "per_class-q1.00", "global_random-q0.05"],
    "weighting": ["none", "alpha0.5", "alpha-1", "alpha2", "alpha-0.25"],
}
BAD = {
    "filter": [
        "None",
        "global-q0",
        "global-q0.0",
        "global-q1.5",
        "global-q2",
        "global-q0.8.1",
        "global-q.8",
        "per-class-q0.9",
        "random-q0.9",
        "global_random_random-q0.9",
        "global-0.9",
        "global-q0.9/x",
        "",
    ],
    "weighting": ["alpha", "alpha.5", "alpha1.", "alpha1.2.3", "alpha+1", "beta0.5", "alpha0.5x", ""],
}
PARSERS = {"filter": grid.parse_filter, "weighting": grid.parse_weighting}


def _parses(factor: str, name: str) -> bool:
    try:
        PARSERS[factor](name)
    except grid.ConfigError:
        return False
    return True


@pytest.mark.parametrize("factor", ["filter", "weighting"])
def test_wildcard_pattern_accepts_exactly_what_the_parser_accepts(factor):
    for name in GOOD[factor] + BAD[factor]:
        matches = re.fullmatch(grid.WILDCARDS[factor], name) is not None
        assert matches == _parses(factor, name) == (name in GOOD[factor]), name


def test_schema_states_the_same_vocabulary():
    conds = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())["properties"]["conditions"]
    items = {f: conds["properties"][f + "s"]["items"] for f in grid.FACTORS}
    assert tuple(items["ordering"]["enum"]) == grid.ORDERINGS
    assert tuple(items["algorithm"]["enum"]) == grid.ALGORITHMS
    for factor in ("filter", "weighting"):
        schema = re.compile(items[factor]["pattern"])
        for name in GOOD[factor] + BAD[factor]:
            assert (schema.search(name) is not None) == (name in GOOD[factor]), (factor, name)
    datasets = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())["properties"]["dataset"]
    assert tuple(datasets["properties"]["name"]["enum"]) == grid.DATASET_NAMES


def test_run_id_is_the_condition_path_below_the_class_order():
    cond = {"filter": "none", "ordering": "random", "weighting": "alpha0.5", "algorithm": "cbp"}
    assert grid.RUN_ID.format(seed=3, **cond) == f"order3/{grid.condition_path(cond)}"


def test_lr_at_every_task_epoch():
    lrs = [grid.lr_at(e, 0.1, [60, 120, 160], 0.2) for e in range(200)]
    assert lrs[:60] == [0.1] * 60
    assert lrs[60:120] == pytest.approx([0.02] * 60) and lrs[120:160] == pytest.approx([0.004] * 40)
    assert lrs[160:] == pytest.approx([0.0008] * 40)


def test_probe_epochs_cover_the_after_window_and_the_end():
    assert grid.probe_epochs(2, 10, 3) == [21, 22, 23, 30]
    assert grid.probe_epochs(0, 10, 3, extra=[5]) == [1, 2, 3, 5, 10]


def test_epoch_ranges_scorer_grid_and_task_classes():
    assert list(grid.task_epoch_range(1, 4)) == [5, 6, 7, 8]
    assert grid.scorer_grid(40, 8) == [8, 16, 24, 32, 40]
    assert grid.task_classes([7, 3, 5, 1], 1, 1) == [7, 3]


def test_images_and_classes_per_dataset(demo_config, paper_config):
    assert grid.n_classes(paper_config["dataset"]) == 100 and grid.n_classes(demo_config["dataset"]) == 10
    assert grid.images_per_class(paper_config["dataset"]) == 450
    assert grid.images_per_class(demo_config["dataset"]) == int(180 * (1 - 0.15 - 0.2))
    # the rehearsal's generated archive: its own train-file images per class, minus validation
    rehearsal = mpconfig.load(ROOT / "config.yaml", ROOT / "config/rehearsal.yaml")["dataset"]
    assert grid.images_per_class(rehearsal) == rehearsal["generated"]["train_per_class"] - 1 == 5
