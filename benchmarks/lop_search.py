"""Search for a 2-core setting that loses plasticity: base vs retrained (vs shrink_perturb).

Drives ``memplast.train.run_task`` directly (no Snakemake) over several class orders and prints,
per task, the paired gap test-acc(base) - test-acc(retrained) in points with its 95% t-interval
over orders, the model-level signature of base (dormant fraction, effective rank of the end
checkpoints), and the share of the final gap that each mitigation recovers. One JSON line per
setting is appended to ``--out`` so docs/positive_control.md quotes measured numbers only.

    PYTHONPATH=$PWD nice -n 10 python benchmarks/lop_search.py digits60 --orders 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from snakemake.utils import update_config

from memplast import config as mpconfig
from memplast import data
from memplast.augment import normalize
from memplast.checkpoints import load_checkpoint
from memplast.masks import class_mask
from memplast.model_metrics import model_metrics
from memplast.plasticity import gap_table, signature_table, trend_table
from memplast.train import RunSpec, TaskPaths, run_task

ROOT = Path(__file__).resolve().parent.parent

# name -> overlay on config.yaml + config/demo.yaml (deep-merged)
SETTINGS = {
    # the first probe: demo data, 60 epochs per task
    "digits60": {"protocol": {"epochs_per_task": 60, "lr_milestones": [30, 45], "lr_gamma": 0.1}},
    "digits60-wd0": {
        "protocol": {"epochs_per_task": 60, "lr_milestones": [30, 45], "lr_gamma": 0.1, "weight_decay": 0.0}
    },
    "digits60-few": {
        "dataset": {"split_fractions": {"val": 0.15, "test": 0.55}},
        "protocol": {"epochs_per_task": 60, "lr_milestones": [30, 45], "lr_gamma": 0.1},
    },
    "digits100": {"protocol": {"epochs_per_task": 100, "lr_milestones": [50, 75], "lr_gamma": 0.1}},
    "digits60-w8": {
        "model": {"width": 8},
        "protocol": {"epochs_per_task": 60, "lr_milestones": [30, 45], "lr_gamma": 0.1},
    },
    "digits60-lr": {"protocol": {"epochs_per_task": 60, "lr": 0.1, "lr_milestones": [30, 45], "lr_gamma": 0.1}},
    # warm-start hard: no augmentation, no weight decay, 30% of the data for training
    "digits60-hard": {
        "dataset": {"split_fractions": {"val": 0.15, "test": 0.55}, "augmentation": {"crop_padding": 0}},
        "protocol": {"epochs_per_task": 60, "lr_milestones": [30, 45], "lr_gamma": 0.1, "weight_decay": 0.0},
    },
    "digits30-hard": {
        "dataset": {"split_fractions": {"val": 0.15, "test": 0.55}, "augmentation": {"crop_padding": 0}},
        "protocol": {"epochs_per_task": 30, "lr_milestones": [15, 22], "lr_gamma": 0.1, "weight_decay": 0.0},
    },
    # full demo data, but no augmentation and no weight decay (warm-start setting)
    "digits30-full": {
        "dataset": {"augmentation": {"crop_padding": 0}},
        "protocol": {"epochs_per_task": 30, "lr_milestones": [15, 22], "lr_gamma": 0.1, "weight_decay": 0.0},
    },
    "digits30": {"protocol": {"epochs_per_task": 30, "lr_milestones": [15, 22], "lr_gamma": 0.1}},
}


def load_cfg(name: str, extra: dict | None = None) -> dict:
    cfg = mpconfig.load(ROOT / "config.yaml", ROOT / "config" / "demo.yaml")
    update_config(cfg, copy.deepcopy(SETTINGS[name]))
    update_config(cfg, copy.deepcopy(extra or {}))
    return cfg


def end_metrics(path: str, prepared: data.Prepared) -> dict:
    """Dormant fraction and effective rank of an end checkpoint on the seen classes' train samples."""
    model, meta = load_checkpoint(path)
    seen = meta["seen"]
    rows = np.flatnonzero((prepared.split == "train") & np.isin(prepared.labels, seen))
    x = normalize(torch.as_tensor(prepared.images[rows]), prepared.mean, prepared.std)
    m = model_metrics(model, x, torch.as_tensor(prepared.labels[rows]), class_mask(seen, prepared.n_classes, "cpu"))
    return {"dormant": m["dormant_frac"], "eff_rank": m["effective_rank"], "rank99": m["rank99"]}


def run_one(cfg: dict, prepared: data.Prepared, seed: int, algorithm: str, tmp: Path) -> list[dict]:
    """All tasks of one run; per task: end test accuracy and model metrics."""
    p = cfg["protocol"]
    order = data.class_order(seed, prepared.n_classes)
    train_ids = prepared.sample_id[prepared.split == "train"]
    prev, out = None, []
    for t in range(p["n_tasks"]):
        d = tmp / f"order{seed}-{algorithm}" / f"task{t}"
        ckpt = str(d / "end_ckpt.pt")
        spec = RunSpec(f"order{seed}/none/random/none/{algorithm}", seed, order, t, train_ids, "random", 0.0, algorithm)
        paths = TaskPaths(
            end=str(d / "end.pt"),
            checkpoints={(t + 1) * p["epochs_per_task"]: ckpt},
            metrics=str(d / "m.parquet"),
            order_log=str(d / "o.parquet"),
            resume=str(d / "resume.pt"),
            prev_state=prev,
        )
        m = run_task(spec, prepared, cfg, paths, {"search": 1})
        end = m[m.kind == "end"].iloc[0]
        out.append(
            {
                "order": seed,
                "algorithm": algorithm,
                "task": t,
                "test_acc": float(end["test_acc"]),
                "train_acc_last": float(m[m.kind == "epoch"]["train_acc"].iloc[-1]),
                **end_metrics(ckpt, prepared),
            }
        )
        prev = str(d / "end.pt")
    return out


def summarize(rows: list[dict]) -> dict:
    """The workflow's plasticity tables (memplast.plasticity: gap, trend with recoveries, signature)
    computed from the search's rows, as JSON-ready records."""

    # rows stored before the rename call the 99%-count of singular values "stable_rank"
    df = pd.DataFrame(rows).rename(
        columns={
            "order": "order_seed",
            "eff_rank": "effective_rank",
            "dormant": "dormant_units",
            "stable_rank": "rank99",
        }
    )
    means = df.groupby(["algorithm", "task"])[["dormant_units", "effective_rank", "rank99", "test_acc"]].mean()
    return {
        "gap": gap_table(df, {}).to_dict("records"),
        "trend": trend_table(df, {}).to_dict("records"),
        "signature_gap": signature_table(df, {}).to_dict("records"),
        "signature": means.reset_index().to_dict("records"),
    }


def report(res: dict) -> None:
    """Print the summary: per-task gaps, slopes and recoveries, the signature's gaps and means."""
    gap = pd.DataFrame(res["gap"])
    print("algorithm       task  minus retrained, pts [95% CI]   n<0")
    for g in gap.itertuples():
        print(
            f"{g.algorithm:>14} {g.task:>4}  {100 * g.mean:+6.2f} [{100 * g.lo:+6.2f}, {100 * g.hi:+6.2f}]  "
            f"{g.n_negative}/{g.n}"
        )
    for r in res["trend"]:
        line = (
            f"{r['algorithm']}: gap slope over tasks {100 * r['slope']:+.2f} pts/task "
            f"[{100 * r['lo']:+.2f}, {100 * r['hi']:+.2f}], {r['n_negative']}/{r['n']} orders negative"
        )
        if pd.notna(r.get("recovery", np.nan)):
            line += (
                f"; recovers {100 * r['recovery']:.0f}% of base's final gap (minus base "
                f"{100 * r['minus_base_last']:+.2f} [{100 * r['minus_base_lo']:+.2f}, {100 * r['minus_base_hi']:+.2f}])"
            )
        print(line)
    sig = pd.DataFrame(res["signature_gap"])
    for (m, a), g in sig.groupby(["measure", "algorithm"], sort=False):
        print(
            f"{m} {a} - retrained per task: "
            + ", ".join(f"{r.mean:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]" for r in g.itertuples())
        )
    print("algorithm task dormant eff_rank rank99 test_acc")
    for s in res["signature"]:
        print(
            f"{s['algorithm']:>14} {s['task']:>2} {s['dormant_units']:.3f} {s['effective_rank']:7.2f} "
            f"{s['rank99']:5.1f} {s['test_acc']:.4f}"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setting", choices=sorted(SETTINGS))
    ap.add_argument("--orders", type=int, default=5)
    ap.add_argument("--seeds", default=None, help="comma-separated class-order seeds (default: 0..orders-1)")
    ap.add_argument("--merge", action="store_true", help="summarize every stored row of --label instead of running")
    ap.add_argument("--algorithms", default="base,retrained")
    ap.add_argument("--set", default="{}", help='extra JSON overlay, e.g. \'{"protocol": {"lr": 0.1}}\'')
    ap.add_argument("--label", default=None)
    ap.add_argument(
        "--with",
        dest="with_labels",
        default="",
        help="with --merge: comma-separated labels whose rows join (e.g. the base and retrained runs "
        "of the same setting, made once for several mitigations)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "lop_search_results.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("MEMPLAST_THREADS", "1")))
    extra = json.loads(args.set)
    cfg = load_cfg(args.setting, extra)
    mpconfig.validate(cfg)
    prepared = data.prepare(cfg["dataset"])
    algorithms = args.algorithms.split(",")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(args.orders))
    label = args.label or args.setting + (f" {args.set}" if extra else "")
    t0 = time.perf_counter()
    rows = []
    if args.merge:  # parts run in parallel processes, stored under the same label
        labels = [label, *filter(None, args.with_labels.split(","))]
        stored = [json.loads(line) for line in open(args.out)]
        parts = [p for p in stored if p["label"] in labels and "part" in p]
        # each (order, algorithm, task) once, from the first label that has it
        seen, rows = set(), []
        for lab in labels:
            for r in (r for p in parts if p["label"] == lab for r in p["rows"]):
                if (key := (r["order"], r["algorithm"], r["task"])) not in seen:
                    seen.add(key)
                    rows.append(r)
        wall = sum(p["wall_s"] for p in parts)
        seeds = sorted({r["order"] for r in rows})
        args.orders = len(seeds)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in seeds:
                for a in algorithms:
                    rows += run_one(cfg, prepared, seed, a, Path(tmp))
        wall = time.perf_counter() - t0
    if args.seeds and not args.merge:  # a part: stored for --merge; summarized when it can be
        with open(args.out, "a") as f:
            f.write(json.dumps({"label": label, "part": seeds, "wall_s": wall, "rows": rows}) + "\n")
        if len(seeds) < 2 or not {"base", "retrained"} <= set(algorithms):
            print(f"SUMMARY {label} part {seeds}: wall {wall:.0f} s (summarize with --merge --label {label})")
            return
    res = summarize(rows)
    print(
        f"== {label}: {args.orders} orders, {sorted({r['algorithm'] for r in rows})}, wall {wall:.0f} s "
        f"({int(os.environ.get('MEMPLAST_THREADS', '1'))} thread)"
    )
    report(res)
    with open(args.out, "a") as f:
        f.write(
            json.dumps(
                {
                    "label": label,
                    "setting": args.setting,
                    "overlay": extra,
                    "orders": args.orders,
                    "algorithms": algorithms,
                    "wall_s": wall,
                    **res,
                    "rows": rows,
                }
            )
            + "\n"
        )
    fg = [g for g in res["gap"] if g["algorithm"] == "base"][-1]
    print(
        f"SUMMARY {label}: final gap {100 * fg['mean']:+.2f} pts [{100 * fg['lo']:+.2f}, {100 * fg['hi']:+.2f}], wall {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
