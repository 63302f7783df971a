"""Tuning before comparing: each algorithm's hyper-parameters chosen on class orders of its own.

``tuning.grids`` maps an algorithm to a grid over ``protocol`` keys (dotted paths such as
``cbp.replacement_rate`` or ``upgd.lr.sgd``); every point of the grid is trained on every class
order of ``tuning.seeds`` (disjoint from ``class_orders.seeds``, the evaluation orders) with the
test split removed from memory (:func:`without_test`), and the point with the highest mean
validation accuracy over tasks and tuning orders (end-of-task, best-validation weights) is
selected (:func:`select`). ``results/tuning/<algorithm>.yaml`` holds the selection and the full
grid table; with ``tuning.use: true`` every evaluation run of that algorithm trains with the
selected values (:func:`apply_selection`) and its provenance says where each came from.

No heavy imports: the Snakefile imports this module at DAG-build time.
"""

from __future__ import annotations

import copy
import itertools
import math

import yaml

from memplast.grid import ConfigError


def grid_points(grid: dict) -> list[dict]:
    """Every point of ``grid`` ({dotted key: [values]}), in the order of the keys' product."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _set(protocol: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = protocol
    for k in parents:
        node = node[k]
    node[leaf] = value


def _has(protocol: dict, dotted: str) -> bool:
    node = protocol
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True


def with_values(protocol: dict, values: dict) -> dict:
    """A copy of the protocol section with ``values`` ({dotted key: value}) set."""
    out = copy.deepcopy(protocol)
    for key, value in values.items():
        _set(out, key, value)
    return out


def check_tuning(config: dict) -> None:
    """Tuning orders disjoint from the evaluation orders, grid keys that exist in ``protocol``,
    and the same number of grid points (the same budget) for every tuned algorithm."""
    tuning, proto = config["tuning"], config["protocol"]
    if shared := sorted(set(tuning["seeds"]) & set(config["class_orders"]["seeds"])):
        raise ConfigError(
            f"tuning.seeds {shared} are also evaluation class orders (class_orders.seeds): tuning on them "
            "would select on the orders it reports; choose other seeds"
        )
    sizes = {}
    if missing := [a for a in tuning["algorithms"] if a not in tuning["grids"]]:
        raise ConfigError(f"tuning.algorithms {missing} have no grid under tuning.grids; add one")
    for algorithm in tuning["algorithms"]:
        grid = tuning["grids"][algorithm]
        if bad := [k for k in grid if not _has(proto, k)]:
            raise ConfigError(
                f"tuning.grids.{algorithm}: {bad} are not keys of protocol (dotted, e.g. cbp.maturity_threshold)"
            )
        sizes[algorithm] = math.prod(len(v) for v in grid.values())
    if len(set(sizes.values())) > 1:
        raise ConfigError(
            f"tuning.grids give different budgets {sizes} (points per algorithm); every algorithm gets the "
            "same number of grid points"
        )


def tuned_algorithms(config: dict) -> list[str]:
    """The algorithms tuned (``tuning.algorithms``; each has a grid)."""
    return list(config["tuning"]["algorithms"])


def point_protocol(config: dict, algorithm: str, point: int) -> dict:
    """The protocol a tuning job of grid ``point`` of ``algorithm`` trains with."""
    return with_values(config["protocol"], grid_points(config["tuning"]["grids"][algorithm])[point])


def without_test(data):
    """The prepared dataset with every test-split row removed: a tuning job cannot read the test set."""
    import dataclasses

    import numpy as np

    keep = data.split != "test"
    arrays = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    n = len(data.split)
    return dataclasses.replace(
        data, **{k: v[keep] for k, v in arrays.items() if isinstance(v, np.ndarray) and len(v) == n}
    )


def grid_table(grid: dict, end_rows):
    """One row per grid point: its values, mean validation accuracy over tasks and tuning orders
    (``end_rows``: the tuning runs' end-of-task metrics with columns point, seed, task, val_acc),
    its standard error over orders and the number of (order, task) cells."""
    import pandas as pd

    points = grid_points(grid)
    rows = []
    for k, values in enumerate(points):
        cells = end_rows[end_rows["point"] == k]
        per_order = cells.groupby("seed")["val_acc"].mean()
        se = per_order.std(ddof=1) / math.sqrt(len(per_order)) if len(per_order) > 1 else float("nan")
        rows.append({"point": k, **values, "mean_val_acc": cells["val_acc"].mean(), "se_over_orders": se,
                     "n_cells": len(cells)})  # fmt: skip
    return pd.DataFrame(rows)


def select(table) -> int:
    """The grid point with the highest mean validation accuracy (ties: the earlier point)."""
    if table["mean_val_acc"].isna().any():
        raise ValueError("a tuning grid point has no validation accuracy: its runs are missing")
    return int(table.loc[table["mean_val_acc"].idxmax(), "point"])


def apply_selection(protocol: dict, selection: dict | None) -> tuple[dict, dict]:
    """(protocol with the tuned values, the source of each tuned hyper-parameter): ``selection`` is
    the content of ``results/tuning/<algorithm>.yaml`` (None: untuned, every value from the config)."""
    if selection is None:
        return protocol, {"tuned": False}
    source = f"results/tuning/{selection['algorithm']}.yaml (point {selection['point']}, mean val acc {selection['mean_val_acc']:.4f})"
    return with_values(protocol, selection["selected"]), {
        "tuned": True,
        "hyper_parameters": {k: {"value": v, "source": source} for k, v in selection["selected"].items()},
    }


CRITERION = "mean end-of-task validation accuracy (best-validation weights) over tasks and tuning class orders"
_RUN_RE = r"/p(?P<point>\d+)/order(?P<seed>\d+)/task(?P<task>\d+)/metrics\.parquet$"


def end_rows(metrics_paths):
    """The end-of-task rows (point, seed, task, val_acc) of tuning runs' metrics files, the grid point,
    order and task read from each path (``results/tuning/runs/<algorithm>/p<k>/order<s>/task<t>``)."""
    import re

    import pandas as pd

    from memplast import io

    frames = []
    for path in metrics_paths:
        m = re.search(_RUN_RE, str(path))
        if m is None:
            raise ValueError(f"{path}: not a tuning run's metrics file (.../p<k>/order<s>/task<t>/metrics.parquet)")
        end = io.read_parquet(path).query("kind == 'end'")[["val_acc"]]
        frames.append(end.assign(**{k: int(v) for k, v in m.groupdict().items()}))
    return pd.concat(frames, ignore_index=True)


class PlainDumper(yaml.SafeDumper):
    """Safe YAML without anchors and aliases (a repeated list is written out again)."""

    def ignore_aliases(self, data):
        return True


def table_records(table) -> list[dict]:
    """The grid table as plain YAML-ready records."""
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in table.to_dict("records")]


# protocol keys each algorithm trains with, besides the SGD ones every run records
HYPER_KEYS = {"shrink_perturb": ("shrink_perturb",), "cbp": ("cbp",), "upgd": ("upgd",), "upgd_cbp": ("cbp", "upgd")}
SGD_KEYS = ("lr", "momentum", "weight_decay")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def hyper_parameters(protocol: dict, algorithm: str, selection: dict | None = None) -> dict:
    """What ``algorithm`` trains with: {"values": {dotted key: value}, "tuned": bool} (with the
    tuning ``selection`` applied when given)."""
    proto, sources = apply_selection(protocol, selection)
    keys = SGD_KEYS + HYPER_KEYS.get(algorithm, ())
    return {"values": _flatten({k: proto[k] for k in keys}), "tuned": sources["tuned"]}
