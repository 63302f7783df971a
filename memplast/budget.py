"""A budget before the spend: jobs per rule, GPU-hours and disk of a target, from the config.

Jobs and their resources come from Snakemake's own dry run (``snakemake -n``: every job with its
rule, outputs and resources, runtime from the runtime model in rules/common.smk, first attempt).
GPU-hours = sum over jobs of gpu x runtime / 60. Disk is estimated per output kind:

- model weights: 4 bytes per float32 entry of the model's state dict (parameters and BatchNorm
  buffers), counted from the configured architecture (``model`` or ``memo.scorer``);
  a window checkpoint holds the weights, a task-end state the weights plus SGD momentum (one more
  copy of the parameters);
- tables: rows x bytes per row, rows from the protocol (samples of the seen classes x probed
  checkpoints), bytes per row measured on the demo's Parquet files (compressed);
- the prepared dataset: one uint8 per pixel.

Everything is an estimate of the order of magnitude, not of the last megabyte.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from memplast import cost, grid

ROOT = Path(__file__).resolve().parent.parent
# Bytes per row of Parquet tables, measured on the demo's outputs (34-column probe tables: 75;
# curvature tables: 56; per-sample deltas and memo scores: 66 and 151).
PROBE_ROW_BYTES = 75
CURVATURE_ROW_BYTES = 56
DELTA_ROW_BYTES = 66
KINDS = ["window checkpoints", "task-end states", "scorer checkpoints", "probe tables", "other tables", "prepared data"]


def dry_run(configfiles, target=None, force=True, snakemake=None) -> list[dict]:
    """Jobs of ``snakemake -n`` for ``target`` (default: all), each {rule, output, resources}:
    every job of the target with ``force`` (--forceall), else only those still to run."""
    exe = snakemake or str(Path(sys.executable).parent / "snakemake")
    cmd = [
        exe,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "-n",
        *(["--forceall"] if force else []),
        *([target] if target else []),
        "--configfile",
        *map(str, configfiles),
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"snakemake dry run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return parse_jobs(out.stdout)


def parse_jobs(text: str) -> list[dict]:
    jobs, job = [], None
    for line in text.splitlines():
        line = line.strip()  # jobs of a group (probes) are indented once more
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            job = {"rule": m[1], "output": [], "resources": {}, "wildcards": {}}
            jobs.append(job)
        elif job is not None and line.startswith("wildcards: "):
            job["wildcards"] = dict(item.split("=", 1) for item in line[len("wildcards: ") :].split(", "))
        elif job is not None and line.startswith("output: "):
            job["output"] = line[len("output: ") :].split(", ")
        elif job is not None and line.startswith("resources: "):
            for item in line[len("resources: ") :].split(", "):
                key, _, value = item.partition("=")
                try:
                    job["resources"][key] = float(value)
                except ValueError:
                    job["resources"][key] = value
    return jobs


def model_bytes(arch: str, n_classes: int, in_channels: int, width: int) -> tuple[int, int]:
    """(bytes of the model's float32 state dict (parameters and buffers), bytes of its parameters)."""
    import torch

    from memplast.models import build_model

    with torch.device("meta"):
        model = build_model(arch, n_classes, in_channels, width)
    state = model.state_dict()
    params = sum(p.numel() for p in model.parameters())
    return 4 * sum(v.numel() for v in state.values() if v.is_floating_point()), 4 * params


class Sizes:
    """Estimated bytes of each output file of the workflow under ``config``."""

    def __init__(self, config: dict):
        self.cfg = config
        ds = config["dataset"]
        self.n_classes = grid.n_classes(ds)
        shape = grid.image_shape(ds)
        self.pixels = int(shape[0] * shape[1] * shape[2])
        m = config["model"]
        self.weights, self.params = model_bytes(m["arch"], self.n_classes, shape[0], m["width"])
        s = config["memo"]["scorer"]
        self.scorer_weights, _ = model_bytes(s["arch"], self.n_classes, shape[0], s["width"])
        self.per_class = grid.images_per_class(ds)
        self.n_images = self.n_classes * self.per_class  # training images (the largest split)
        self.window = config["probes"]["window"]
        self.cpt = config["protocol"]["classes_per_task"]

    def kind(self, path: str) -> tuple[str, float]:
        """(output kind, estimated bytes) of one output path."""
        if re.search(r"/ckpt/(te\d+|best-\d+|live)\.pt$", path):  # after-window, before-window slots, live
            return "window checkpoints", self.weights
        if path.endswith("/end.pt"):
            return "task-end states", self.weights + self.params
        if re.search(r"memo/scorer/e\d+\.pt$", path):
            return "scorer checkpoints", self.scorer_weights
        m = re.search(r"/probes/boundary(\d+)\.parquet$", path)
        if m:
            rows = (int(m[1]) + 2) * self.cpt * self.per_class * 2 * self.window
            return "probe tables", rows * PROBE_ROW_BYTES
        if path.endswith("/deltas.parquet"):
            # immediate and windowed rows for the samples of the seen classes at every boundary
            n_boundaries = self.cfg["protocol"]["n_tasks"] - 1
            rows = sum(2 * (k + 2) * self.cpt * self.per_class for k in range(n_boundaries))
            return "other tables", rows * DELTA_ROW_BYTES
        if re.search(r"memo/curvature/e\d+\.parquet$", path):
            return "other tables", 1.2 * self.n_images * CURVATURE_ROW_BYTES
        if path.endswith("prepared.npz"):
            return "prepared data", 1.5 * self.n_images * self.pixels
        if path.endswith((".parquet", ".csv")):
            return "other tables", 50e3
        return "other tables", 0.0


def summarize(jobs: list[dict], sizes: Sizes, model=None) -> dict:
    """Jobs, requested GPU-hours and CPU-hours per rule, the cost model's estimated hours of the
    GPU rules (``model``: a :class:`memplast.cost.CostModel`; hours on whatever the job requests:
    GPU or CPU), and bytes per output kind."""
    per_rule = defaultdict(lambda: {"jobs": 0, "gpu_hours": 0.0, "cpu_hours": 0.0, "estimated_hours": None})
    disk = Counter({k: 0.0 for k in KINDS})
    for job in jobs:
        if job["rule"] == "all":
            continue
        r, res = per_rule[job["rule"]], job["resources"]
        hours = float(res.get("runtime", 0)) / 60
        r["jobs"] += 1
        r["gpu_hours"] += float(res.get("gpu", 0) or 0) * hours
        r["cpu_hours"] += hours if not res.get("gpu") else 0.0
        if model is not None and job["rule"] in cost.RULES:
            gpus = float(res.get("gpu", 0) or 0) or 1.0
            r["estimated_hours"] = (r["estimated_hours"] or 0.0) + gpus * model.seconds(
                job["rule"], job["wildcards"]
            ) / 3600
        for path in job["output"]:
            kind, size = sizes.kind(path)
            disk[kind] += size
    return {"rules": dict(per_rule), "disk": dict(disk)}


def per_run_disk(sizes: Sizes, ckpt_task_epochs: int, n_tasks: int) -> dict:
    """Bytes per run: window checkpoints of a probed run and of a `retrained` reference (before:
    the same as a probed run; now: the end-of-task checkpoint only), task-end states, probe tables,
    and the largest resume file of a running task (before: model, best model, momentum and copies
    of the window checkpoints; now: model, best model, momentum and the before-window states, the
    last w epochs' and the best epoch's w). A probed task saves ``ckpt_task_epochs`` epochs by
    number, w before-window slots and the live last epoch."""
    probes = sum(sizes.kind(f"x/probes/boundary{k}.parquet")[1] for k in range(n_tasks - 1))
    window_ckpts_in_resume = min(sizes.window, ckpt_task_epochs)
    return {
        "probed run: window checkpoints": n_tasks * (ckpt_task_epochs + sizes.window + 1) * sizes.weights,
        "probed run: task-end states": n_tasks * (sizes.weights + sizes.params),
        "probed run: probe tables": probes,
        "reference run: checkpoints before": n_tasks * (ckpt_task_epochs + sizes.window + 1) * sizes.weights,
        "reference run: checkpoints now": n_tasks * 1 * sizes.weights,
        "resume file before (peak)": 2 * sizes.weights + sizes.params + window_ckpts_in_resume * sizes.weights,
        "resume file now (peak)": 2 * sizes.weights + sizes.params + 2 * sizes.window * sizes.weights,
    }


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_table(title: str, summary: dict) -> str:
    """Per rule: jobs, requested GPU-h and CPU-h, the estimate of the GPU rules and request/estimate."""
    rules = summary["rules"]
    width = max([len("rule")] + [len(r) for r in rules])
    head = f"  {'rule':<{width}} {'jobs':>6} {'req GPU-h':>10} {'req CPU-h':>10} {'estimated h':>12} {'req/est':>8}"
    lines = [title, head]

    def row(name, r):
        est = r.get("estimated_hours")
        req = r["gpu_hours"] + r["cpu_hours"]
        est_s = f"{est:>12.1f}" if est is not None else f"{'-':>12}"
        ratio = f"{req / est:>8.2f}" if est else f"{'':>8}"
        return (
            f"  {name:<{width}} {r['jobs']:>6} {r['gpu_hours']:>10.1f} {r['cpu_hours']:>10.1f} {est_s} {ratio}".rstrip()
        )

    for rule, r in sorted(rules.items(), key=lambda kv: (-kv[1]["gpu_hours"], kv[0])):
        lines.append(row(rule, r))
    tot = {k: sum(r[k] for r in rules.values()) for k in ("jobs", "gpu_hours", "cpu_hours")}
    lines.append(row("total", {**tot, "estimated_hours": None}))
    modelled = [r for r in rules.values() if r.get("estimated_hours") is not None]
    est = sum(r["estimated_hours"] for r in modelled)
    req = sum(r["gpu_hours"] + r["cpu_hours"] for r in modelled)
    lines.append(
        f"  estimated total of the GPU rules (cost model): {est:.1f} h (requested {req:.1f} h, "
        f"x{req / est if est else float('nan'):.2f})"
    )
    lines.append(
        "  (requested = resources.runtime x gpu; GPU rules: safety factor x the cost model's estimate (memplast/cost.py),"
        " statistics: memplast/stats_cost.py, others flat)"
    )
    lines.append("  disk by output kind:")
    for kind in KINDS:
        lines.append(f"    {kind:<20} {human(summary['disk'][kind]):>10}")
    lines.append(f"    {'total':<20} {human(sum(summary['disk'].values())):>10}")
    return "\n".join(lines)
