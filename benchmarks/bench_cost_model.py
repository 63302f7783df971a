"""The cost model against Snakemake's own measurements: per heavy rule, the time the cost model
predicts from a calibration (memplast/cost.py, without the safety factor) next to the time the
rule's ``benchmark:`` files of a finished run recorded, and their ratio. Goal: every rule's total
within a factor 1.5 (0.67 <= measured / predicted <= 1.5).

A calibration measured with ``--clock cpu`` (scripts/calibrate.py; the right one on a shared CPU
machine, where wall time depends on everyone else's load) is compared with each job's CPU seconds;
a wall-clock one with the benchmark files' wall seconds ``s``. Both columns are printed. A job's CPU
seconds are the exact ones its log's last "done" line records (memplast.cli.process_cpu_seconds),
not the benchmark file's ``cpu_time``: Snakemake samples that every 0.5 s for the first ~15 s of a
job and then every 30 s, so it misses up to 30 s of a job's CPU time (a held-out job of the
rehearsal: 15.1 s in its benchmark file, 26.7 s measured in process). Jobs whose log has no such
line (run before it was logged) fall back to ``cpu_time``; the ``cpu_from_log`` column counts them.

One table over several settings (runs): ``--setting NAME:ROOT:CONFIG[,CONFIG...]:CALIBRATION``,
repeated; ROOT is the run's directory (its benchmark files under ROOT/logs/benchmarks), relative
config and calibration paths are taken from ROOT. Usage (after the demo, in this directory):
    python scripts/calibrate.py --configfile config.yaml config/demo.yaml --clock cpu --out /tmp/cal_demo.yaml
    python benchmarks/bench_cost_model.py --setting demo:.:config.yaml,config/demo.yaml:/tmp/cal_demo.yaml \\
        --setting lop-small:/work/lop:config.yaml,config/demo.yaml,config/lop-small.yaml,config/tuned.yaml:/tmp/cal_lop.yaml
One setting the short way (paths from the current directory; --name defaults to the config files):
    python benchmarks/bench_cost_model.py --configfile config.yaml config/demo.yaml --calibration /tmp/cal_demo.yaml
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
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
    (re.compile(r"tune/(?P<algorithm>[^/]+)/p(?P<point>\d+)/order(?P<seed>\d+)/task(?P<task>\d+)\.tsv$"), "tune_task"),
    (re.compile(r"memo/scorer\.tsv$"), "memo_scorer"),
    (re.compile(r"memo/curvature_e(?P<epoch>\d+)\.tsv$"), "memo_curvature"),
    (re.compile(r"memo/heldout_dependence\.tsv$"), "heldout_dependence"),
    (re.compile(rf"probe/{RUN}/boundary(?P<boundary>\d+)\.tsv$"), "probe"),
    (re.compile(rf"probe/{RUN}/boundaries\.tsv$"), "probe_run"),  # probes.jobs: run
    (re.compile(rf"probe/{RUN}/summary\.tsv$"), "run_summary"),
    (re.compile(rf"probe/{RUN}/heldout\.tsv$"), "heldout"),
]
GOAL = 1.5
# the last line of a job's log (memplast.cli.entrypoint): wall seconds, then the process's CPU seconds
DONE = re.compile(r" done .* in [0-9.]+ s, (?P<cpu>[0-9.]+) CPU s$")


@dataclass
class Setting:
    """One run to compare: its name, config files, benchmark directory and calibration file."""

    name: str
    configfiles: list[str]
    benchmarks: Path
    calibration: str

    @classmethod
    def parse(cls, text: str) -> Setting:
        """``NAME:ROOT:CONFIG[,CONFIG...]:CALIBRATION`` (relative paths from ROOT)."""
        parts = text.split(":")
        if len(parts) != 4 or not all(parts):
            raise SystemExit(
                f"--setting {text!r}: give NAME:ROOT:CONFIG[,CONFIG...]:CALIBRATION, "
                "e.g. demo:.:config.yaml,config/demo.yaml:/tmp/cal_demo.yaml"
            )
        name, root, configs, calibration = parts
        root = Path(root)
        return cls(name, [str(root / c) for c in configs.split(",")], root / "logs" / "benchmarks",
                   str(root / calibration))  # fmt: skip


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
                logged = logged_cpu_seconds(bench_dir.parent / Path(rel).with_suffix(".log"))
                cpu = float(row["cpu_time"]) if logged is None else logged
                out.append(
                    {"rule": rule, "wildcards": wc, "wall": float(row["s"]), "cpu": cpu, "logged": logged is not None}
                )
    return out


def logged_cpu_seconds(log_path: Path) -> float | None:
    """The CPU seconds of the job's last "done" line in its log (memplast.cli.entrypoint), if any."""
    if not log_path.is_file():
        return None
    found = [m for line in log_path.read_text().splitlines() if (m := DONE.search(line))]
    return float(found[-1]["cpu"]) if found else None


def table(rows: list[dict], model: cost.CostModel, clock: str) -> pd.DataFrame:
    """Per rule: jobs, predicted and measured (CPU, wall) seconds summed over its jobs, their ratio
    (measured on ``clock``), the range of the per-job ratios, and whether the total is within GOAL."""
    per = defaultdict(lambda: {"jobs": 0, "logged": 0, "predicted": 0.0, "wall": 0.0, "cpu": 0.0, "job_ratios": []})
    for r in rows:
        p = per[r["rule"]]
        predicted = model.seconds(r["rule"], r["wildcards"])
        p["jobs"] += 1
        p["logged"] += r["logged"]
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
                "cpu_from_log": f"{p['logged']}/{p['jobs']}",
                "measured_wall_s": p["wall"],
                "ratio": p[clock] / p["predicted"],
                "job_ratio_min": min(p["job_ratios"]),
                "job_ratio_max": max(p["job_ratios"]),
            }
            for rule, p in per.items()
        ]
    )
    df["within"] = df["ratio"].between(1 / GOAL, GOAL).map({True: "yes", False: "no"})
    return df.sort_values("predicted_s", ascending=False, ignore_index=True)


def compare(setting: Setting) -> tuple[pd.DataFrame, str]:
    """The table of one setting (a ``setting`` column first) and a line naming its calibration."""
    cfg = mpconfig.load(*setting.configfiles)
    cal = cost.load_calibration(setting.calibration, cfg)
    clock = cal.get("clock", "wall")
    measured = "cpu" if clock == "cpu" else "wall"
    model = cost.CostModel(cfg, cal)
    rows = jobs(setting.benchmarks)
    if not rows:
        raise SystemExit(
            f"setting {setting.name}: no benchmark files of the cost-model rules under {setting.benchmarks}; "
            "run the workflow there first"
        )
    df = table(rows, model, measured)
    df.insert(0, "setting", setting.name)
    return df, f"{setting.name}: {' + '.join(setting.configfiles)}; {model.describe()}; clock {clock}: vs {measured}"


def summary(df: pd.DataFrame) -> str:
    """One line: per setting the range of measured/predicted over rules, and the rules outside the goal."""
    parts = []
    for name, part in df.groupby("setting", sort=False):
        bad = part[part["within"] == "no"]
        verdict = "all within" if bad.empty else f"{len(bad)} outside ({', '.join(bad['rule'])})"
        parts.append(f"{name} {part['ratio'].min():.2f}-{part['ratio'].max():.2f}, {verdict}")
    within = int((df["within"] == "yes").sum())
    return (
        f"summary: measured/predicted per rule: {'; '.join(parts)}; "
        f"{within}/{len(df)} rules within the goal 1/{GOAL}-{GOAL}"
    )


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", action="append", default=[], help="NAME:ROOT:CONFIG[,CONFIG...]:CALIBRATION")
    ap.add_argument("--configfile", nargs="+", default=["config.yaml", "config/demo.yaml"])
    ap.add_argument("--calibration", help="one setting: a calibration file of these shapes (scripts/calibrate.py)")
    ap.add_argument("--benchmarks", default="logs/benchmarks", help="one setting: the run's benchmark directory")
    ap.add_argument("--name", default=None, help="one setting: its name in the table")
    args = ap.parse_args(argv)
    settings = [Setting.parse(s) for s in args.setting]
    if args.calibration:
        name = args.name or " + ".join(args.configfile)
        settings.append(Setting(name, args.configfile, Path(args.benchmarks), args.calibration))
    if not settings:
        ap.error("give --setting NAME:ROOT:CONFIGS:CALIBRATION (repeatable) or --calibration for one setting")
    tables = []
    for setting in settings:
        df, line = compare(setting)
        print(line)
        tables.append(df)
    df = pd.concat(tables, ignore_index=True)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(summary(df))
    return df


if __name__ == "__main__":
    main()
