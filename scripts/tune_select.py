"""Select one algorithm's tuned hyper-parameters from its tuning runs (memplast/tuning.py)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import yaml  # noqa: E402

from memplast import io, tuning  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402


def main(metrics: list, selection: str, table: str, algorithm: str, grid: dict, cfg: dict):
    """Write TABLE (every grid point of ALGORITHM: values, mean end-of-task validation accuracy over
    tasks and tuning orders, its SE over orders) and SELECTION (the best point's values, the criterion,
    the grid table and provenance) from the tuning runs' METRICS."""
    ends = tuning.end_rows(metrics)
    grid_table = tuning.grid_table(grid, ends)
    best = tuning.select(grid_table)
    row = grid_table.loc[grid_table["point"] == best].iloc[0]
    prov = io.provenance(cfg, algorithm=algorithm, metrics=len(metrics))
    record = {
        "algorithm": algorithm,
        "point": best,
        "selected": tuning.grid_points(grid)[best],  # the grid's own values (an int stays an int)
        "mean_val_acc": float(row["mean_val_acc"]),
        "criterion": tuning.CRITERION,
        "tuning_seeds": cfg["tuning"]["seeds"],
        "evaluation_seeds": cfg["class_orders"]["seeds"],
        "grid": tuning.table_records(grid_table),
        "provenance": prov,
    }
    io.write_csv(grid_table, table, prov)
    with io.atomic_path(selection) as tmp:
        Path(tmp).write_text(yaml.dump(record, Dumper=tuning.PlainDumper, sort_keys=False, default_flow_style=None))
    print(f"{algorithm}: point {best} {record['selected']} (mean val acc {record['mean_val_acc']:.4f})")


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
