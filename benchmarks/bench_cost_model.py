"""The cost model against Snakemake's own measurements: per heavy rule, the time the cost model
predicts from a calibration (memplast/cost.py, without the safety factor) next to the time the
rule's ``benchmark:`` files of a finished run recorded, and their ratio. Goal: every rule's total
within a factor 1.5 (0.67 <= measured / predicted <= 1.5).

A calibration measured with ``--clock cpu`` (scripts/calibrate.py; the right one on a shared CPU
machine, where wall time depends on everyone else's load) is compared with the benchmark files'
``cpu_time``; a wall-clock one with their wall seconds ``s``. Both columns are printed.

Usage (after a run, e.g. the demo, in the same directory):
    python scripts/calibrate.py --configfile config.yaml config/demo.yaml --clock cpu --out /tmp/cal.yaml
    python benchmarks/bench_cost_model.py --configfile config.yaml config/demo.yaml --calibration /tmp/cal.yaml
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memplast import config as mpconfig  # noqa: E402
from memplast import cost  # noqa: E402

RUN = r"order(?P<seed>\d+)/(?P<filter>[^/]+)/(?P<ordering>[^/]+)/(?P<weighting>[^/]+)/(?P<algorithm>[^/]+)"
# benchmark file (under logs/benchmarks, rules/common.smk bench_path) -> rule
PATTERNS = [
    (re.compile(rf"train/{RUN}/task(?P<task>\d+)\.tsv$"), "train_task"),
    (re.compile(r"memo/scorer\.tsv$"), "memo_scorer"),
    (re.compile(r"memo/curvature_e(?P<epoch>\d+)\.tsv$"), "memo_curvature"),
    (re.compile(rf"probe/{RUN}/boundary(?P<boundary>\d+)\.tsv$"), "probe"),
    (re.compile(rf"probe/{RUN}/boundaries\.tsv$"), "probe_run"),  # probes.jobs: run
    (re.compile(rf"probe/{RUN}/summary\.tsv$"), "run_summary"),
]
GOAL = 1.5


def jobs(bench_dir: Path) -> list[dict]:
    """One row per benchmark file of a cost-model rule: rule, wildcards, wall s, cpu s."""
    out = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        rel = path.relative_to(bench_dir).as_posix()
        for pattern, rule in PATTERNS:
            m = pattern.match(rel)
            if m:
                wc = m.groupdict()
                if rule == "train_task" and wc["algorithm"] == "retrained":
                    rule = "train_task_reference"
                row = pd.read_csv(path, sep="\t").iloc[-1]
                out.append({"rule": rule, "wildcards": wc, "wall": float(row["s"]), "cpu": float(row["cpu_time"])})
    return out


def table(rows: list[dict], model: cost.CostModel, clock: str) -> pd.DataFrame:
    per = defaultdict(lambda: {"jobs": 0, "predicted": 0.0, "wall": 0.0, "cpu": 0.0, "job_ratios": []})
    for r in rows:
        p = per[r["rule"]]
        predicted = model.seconds(r["rule"], r["wildcards"])
        p["jobs"] += 1
        p["predicted"] += predicted
        p["wall"] += r["wall"]
        p["cpu"] += r["cpu"]
        p["job_ratios"].append(r[clock] / predicted)
    df = pd.DataFrame(
        [
            {
                "rule": rule,
                "jobs": p["jobs"],
                "predicted_s": p["predicted"],
                "measured_cpu_s": p["cpu"],
                "measured_wall_s": p["wall"],
                "ratio": p[clock] / p["predicted"],
                "job_ratio_min": min(p["job_ratios"]),
                "job_ratio_max": max(p["job_ratios"]),
            }
            for rule, p in per.items()
        ]
    )
    return df.sort_values("predicted_s", ascending=False, ignore_index=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="+", default=["config.yaml", "config/demo.yaml"])
    ap.add_argument("--calibration", required=True, help="a calibration file of these shapes (scripts/calibrate.py)")
    ap.add_argument("--benchmarks", default="logs/benchmarks", help="the run's benchmark directory")
    ap.add_argument("--name", default=None, help="the setting's name in the summary line")
    args = ap.parse_args(argv)
    cfg = mpconfig.load(*args.configfile)
    cal = cost.load_calibration(args.calibration, cfg)
    clock = cal.get("clock", "wall")
    measured = "cpu" if clock == "cpu" else "wall"
    model = cost.CostModel(cfg, cal)
    rows = jobs(Path(args.benchmarks))
    if not rows:
        raise SystemExit(f"no benchmark files of the cost-model rules under {args.benchmarks}; run the workflow first")
    df = table(rows, model, measured)
    print(f"config {' + '.join(args.configfile)}; {model.describe()}; clock {clock}: compared with {measured} time")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    bad = df[(df["ratio"] > GOAL) | (df["ratio"] < 1 / GOAL)]
    name = args.name or " + ".join(args.configfile)
    verdict = "all within" if bad.empty else f"{len(bad)} outside ({', '.join(bad['rule'])})"
    print(
        f"summary: {name}: measured/predicted per rule {df['ratio'].min():.2f}-{df['ratio'].max():.2f}, "
        f"{verdict} the goal 1/{GOAL}-{GOAL}"
    )
    return df


if __name__ == "__main__":
    main()
