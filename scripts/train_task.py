"""Train one task of one incremental run (the LoP protocol; see memplast/train/task.py)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from memplast import io  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.config import read_yaml  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.runtime import resolve as runtime_of  # noqa: E402
from memplast.runtime import with_runtime  # noqa: E402
from memplast.train import RunSpec, TaskPaths, run_task  # noqa: E402
from memplast.tuning import apply_selection, without_test  # noqa: E402


def main(
    prepared: str,
    order: str,
    kept: str,
    end: str,
    checkpoints: list,
    metrics: str,
    order_log: str,
    run: str,
    seed: int,
    task: int,
    ordering: str,
    alpha: float,
    algorithm: str,
    ckpt_task_epochs: list,
    resume: str,
    score_col: str,
    cfg: dict,
    prev_state: str | None = None,
    scores: str | None = None,
    file_order: str | None = None,
    window: list = (),
    live: str | None = None,
    runtime: dict | None = None,
    tuning: str | None = None,
    drop_test: bool = False,
):
    """Train task TASK of run RUN from PREV_STATE; write END, CHECKPOINTS, WINDOW (slot j = best
    epoch - j), LIVE (last epoch before the restore), METRICS, ORDER_LOG. TUNING: the algorithm's
    results/tuning file, whose selected hyper-parameters replace the config's; DROP_TEST: the test
    split is removed from memory first (tuning jobs: their test columns are NaN)."""
    data = load_prepared(prepared)
    if drop_test:
        data = without_test(data)
    protocol, hyper_sources = apply_selection(cfg["protocol"], read_yaml(tuning) if tuning else None)
    cfg = {**cfg, "protocol": protocol}
    memo = None
    if scores is not None:
        memo = io.read_parquet(scores).query("split == 'train'").set_index("sample_id")[score_col]
    file_ids = pd.read_csv(file_order)["sample_id"].to_numpy() if file_order else None
    spec = RunSpec(
        name=run,
        order_seed=seed,
        class_order=pd.read_csv(order)["class"].to_numpy(),
        task=task,
        kept_ids=io.read_parquet(kept)["sample_id"].to_numpy(),
        ordering=ordering,
        weighting_alpha=alpha,
        algorithm=algorithm,
        memo=memo,
        file_order=file_ids,
    )
    E = cfg["protocol"]["epochs_per_task"]
    paths = TaskPaths(
        end=end,
        checkpoints={task * E + te: p for te, p in zip(ckpt_task_epochs, np.atleast_1d(checkpoints))},
        metrics=metrics,
        order_log=order_log,
        resume=resume,
        prev_state=prev_state,
        window=list(np.atleast_1d(window)),
        live=live,
    )
    prov = io.provenance(cfg, run=run, task=task, score_col=score_col, hyper_parameters=hyper_sources)
    run_cfg = {**cfg, "protocol": with_runtime(cfg["protocol"], runtime_of(cfg, runtime))}
    run_task(spec, data, run_cfg, paths, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
