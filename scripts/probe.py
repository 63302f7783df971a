"""Probe every sample at the checkpoints around task boundaries (design §4): one boundary per
call of :func:`probe_table`; a job probes one boundary, or with ``probes.jobs: run`` every
boundary of a run in one process (data and code loaded once, each boundary's checkpoints in turn)."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from memplast import io  # noqa: E402
from memplast.augment import normalize  # noqa: E402
from memplast.checkpoints import read_boundary  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.config import SCORE_COLUMNS  # noqa: E402
from memplast.curvature import checkpoint_seed, curvature_scores, strict_numerics  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.device import resolve_device  # noqa: E402
from memplast.grid import task_classes  # noqa: E402
from memplast.masks import class_mask  # noqa: E402
from memplast.probes import degenerate_thresholds, probe_boundary  # noqa: E402
from memplast.runtime import resolve as runtime_of  # noqa: E402

log = logging.getLogger("memplast")


def split_windows(checkpoints: list, boundaries: list, window: int) -> list[list]:
    """Each boundary's checkpoints: CHECKPOINTS holds the windows of BOUNDARIES one after another,
    2 w + 1 each (memplast.checkpoints.boundary_checkpoints)."""
    size = 2 * window + 1
    if len(checkpoints) != size * len(boundaries):
        raise ValueError(
            f"{len(checkpoints)} checkpoints for the boundaries {boundaries}; give each boundary's window of "
            f"2 w + 1 = {size} (memplast.checkpoints.boundary_checkpoints), one boundary after another"
        )
    return [list(checkpoints[i * size : (i + 1) * size]) for i in range(len(boundaries))]


def probe_table(data, classes, kept_ids, checkpoints: list, boundary: int, cfg: dict, rt: dict, device, numerics: dict):
    """The long probe table of boundary BOUNDARY from its CHECKPOINTS (before-window slots, live last
    epoch, after-window) and its provenance: the kept training samples of the classes seen up to task
    BOUNDARY + 1 of the prepared DATA, under the class order CLASSES."""
    proto, pcfg, memo = cfg["protocol"], cfg["probes"], cfg["memo"]
    old = task_classes(classes, boundary, proto["classes_per_task"])
    new_seen = task_classes(classes, boundary + 1, proto["classes_per_task"])
    rows = np.flatnonzero((data.split == "train") & np.isin(data.labels, new_seen) & np.isin(data.sample_id, kept_ids))
    images = normalize(torch.as_tensor(data.images[rows]), data.mean, data.std)
    labels = torch.as_tensor(data.labels[rows])
    boundary_epoch = (boundary + 1) * proto["epochs_per_task"]
    window = read_boundary(checkpoints, device, boundary)
    best = window.best_epoch
    masks = {e: class_mask(seen, data.n_classes, device) for e, seen in window.seen.items()}
    models = {e: (m, masks[e]) for e, m in window.models.items()}
    live = None if window.live is None else (window.live[0], class_mask(window.live[1], data.n_classes, device))
    restored = live is not None and best < boundary_epoch
    table = probe_boundary(
        {e: m for e, (m, _) in models.items()},
        boundary_epoch,
        images,
        labels,
        data.sample_id[rows],
        np.isin(data.labels[rows], old),
        class_mask(old, data.n_classes, device),
        {e: mask for e, (_, mask) in models.items()},
        proto["lr"],
        taus=pcfg["taus"],
        score_taus=pcfg["score_taus"],
        batch_size=pcfg.get("batch_size", rt["probe_batch_size"]),
        device=device,
        bn_mode=pcfg["bn_mode"],
        best_epoch=best,
        live=live[0] if restored else None,
    )
    table.insert(2, "boundary", boundary)
    if pcfg["curvature"]:
        # dynamic memo m_i(t): memo.score's curvature under each checkpoint's native mask, own probes per checkpoint
        method = memo["score"]
        col = SCORE_COLUMNS[method]
        parts = []
        points = [(e, m, "path") for e, m in sorted(models.items())] + (
            [(boundary_epoch, live, "live")] if restored else []
        )
        for epoch, (model, mask), kind in points:
            inside = mask.cpu()[labels].numpy()
            c = curvature_scores(
                model,
                images[inside],
                labels[inside],
                torch.as_tensor(data.sample_id[rows][inside]),
                mask,
                [method],
                n_probes=memo["n_probes"],
                fd_step=memo["fd_step"],
                batch_size=memo["batch_size"],
                seed=checkpoint_seed(memo["seed"], epoch),
                device=device,
            )
            role = table.loc[table["epoch"] == epoch, "role"]
            role = "live" if kind == "live" else role[role != "live"].iloc[0]
            parts.append(c[["sample_id", col]].rename(columns={col: "curv_dyn"}).assign(epoch=epoch, role=role))
        table = table.merge(pd.concat(parts), on=["sample_id", "epoch", "role"], how="left")
    prov = io.provenance(
        cfg,
        boundary=boundary,
        checkpoints=list(map(str, checkpoints)),
        best_epoch=best,
        numerics=numerics,
        degenerate_thresholds=degenerate_thresholds(table),
    )
    return table, prov


def main(
    prepared: str,
    order: str,
    kept: str,
    checkpoints: list,
    probes: str | list,
    boundary: int | list,
    cfg: dict,
    runtime: dict | None = None,
):
    """Write the long probe table of boundary BOUNDARY to PROBES from its CHECKPOINTS; or, with a
    list of boundaries (probes.jobs: run), one table per boundary to the list PROBES, CHECKPOINTS
    holding their windows one after another. The data and the code are loaded once."""
    proto, pcfg, memo = cfg["protocol"], cfg["probes"], cfg["memo"]
    if pcfg["curvature"] and memo["score"] not in memo["methods"]:
        raise ValueError(
            f"probes.curvature needs the curvature method memo.score={memo['score']!r} in "
            f"memo.methods {memo['methods']}; set memo.score to one of them or probes.curvature: false"
        )
    boundaries, outputs = ([boundary], [probes]) if isinstance(boundary, int) else (list(boundary), list(probes))
    if len(outputs) != len(boundaries):
        raise ValueError(f"{len(outputs)} outputs for the boundaries {boundaries}; give one probe table per boundary")
    windows = split_windows(checkpoints, boundaries, pcfg["window"])
    rt = runtime_of(cfg, runtime)
    device = resolve_device(rt["device"])
    numerics = strict_numerics(device, proto["deterministic"])
    data = load_prepared(prepared)
    classes = pd.read_csv(order)["class"].to_numpy()
    kept_ids = io.read_parquet(kept)["sample_id"]
    for k, window, out in zip(boundaries, windows, outputs, strict=True):
        log.info("boundary %d: %d checkpoints -> %s", k, len(window), out)
        table, prov = probe_table(data, classes, kept_ids, window, k, cfg, rt, device, numerics)
        io.write_parquet(table, out, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
