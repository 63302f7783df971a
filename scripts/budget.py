"""Print the budget of a configuration before spending it: jobs per rule, GPU-hours by rule (the
runtime model of rules/common.smk), disk by output kind, for the whole study and for the headline
target alone, and the disk of one run (see memplast/budget.py for how each number is estimated).

Usage: python scripts/budget.py [--configfile config.yaml ...] [--target results/figures/memo_vs_dgrad.pdf]
(`make budget` runs it on the paper-scale defaults.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memplast import budget, cost  # noqa: E402
from memplast import config as mpconfig  # noqa: E402
from memplast.grid import probe_epochs  # noqa: E402

HEADLINE = "results/figures/memo_vs_dgrad.pdf"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="+", default=["config.yaml"], help="relative to the repository root")
    ap.add_argument("--target", default=HEADLINE, help=f"the headline target (default {HEADLINE})")
    args = ap.parse_args(argv)
    args.configfile = [
        str(Path(c).resolve().relative_to(ROOT)) if Path(c).resolve().is_relative_to(ROOT) else c
        for c in args.configfile
    ]
    cfg = mpconfig.load(*(ROOT / c for c in args.configfile))
    sizes = budget.Sizes(cfg)
    proto = cfg["protocol"]
    print(
        f"config: {' + '.join(args.configfile)}; model {cfg['model']['arch']} width {cfg['model']['width']}: "
        f"{budget.human(sizes.weights)} per checkpoint"
    )
    model = cost.CostModel(cfg, root=ROOT)
    print(f"cost model: {model.describe()}")
    print(
        budget.format_table(
            "whole study (snakemake, default target all):",
            budget.summarize(budget.dry_run(args.configfile), sizes, model),
        )
    )
    print(
        budget.format_table(
            f"headline target alone ({args.target}):",
            budget.summarize(budget.dry_run(args.configfile, args.target), sizes, model),
        )
    )
    n_ckpt = len(probe_epochs(0, proto["epochs_per_task"], cfg["probes"]["window"], cfg["probes"]["extra_epochs"]))
    print(f"one run ({proto['n_tasks']} tasks, {n_ckpt} window checkpoints per task):")
    for name, value in budget.per_run_disk(sizes, n_ckpt, proto["n_tasks"]).items():
        print(f"  {name:<36} {budget.human(value):>10}")
    if cfg["probes"]["keep_checkpoints"]:
        print("  (probes.keep_checkpoints: false deletes a run's window checkpoints once its probes and summary exist)")


if __name__ == "__main__":
    main()
