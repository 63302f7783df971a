"""Probe every sample at the checkpoints around one task boundary (design §4)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1]))  # noqa: F821

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from memplast import io  # noqa: E402
from memplast.augment import normalize  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.runtime import resolve as runtime_of  # noqa: E402
from memplast.config import SCORE_COLUMNS  # noqa: E402
from memplast.curvature import curvature_scores  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.models import class_mask, load_checkpoint  # noqa: E402
from memplast.probes import probe_boundary  # noqa: E402
from memplast.train import resolve_device, task_classes  # noqa: E402


def main(prepared: str, order: str, kept: str, checkpoints: list, probes: str, boundary: int, cfg: dict,
         runtime: dict | None = None):
    """Write the long probe table of boundary BOUNDARY from its window CHECKPOINTS."""
    proto, pcfg = cfg["protocol"], cfg["probes"]
    rt = runtime_of(cfg, runtime)
    device = resolve_device(rt["device"])
    data = load_prepared(prepared)
    classes = pd.read_csv(order)["class"].to_numpy()
    old = task_classes(classes, boundary, proto["classes_per_task"])
    new_seen = task_classes(classes, boundary + 1, proto["classes_per_task"])
    rows = np.flatnonzero((data.split == "train") & np.isin(data.labels, new_seen)
                          & np.isin(data.sample_id, io.read_parquet(kept)["sample_id"]))
    images = normalize(torch.as_tensor(data.images[rows]), data.mean, data.std)
    labels = torch.as_tensor(data.labels[rows])
    models = {}
    for path in checkpoints:
        model, meta = load_checkpoint(path, device)
        models[meta["epoch"]] = (model, class_mask(meta["seen"], data.n_classes, device))
    table = probe_boundary(
        {e: m for e, (m, _) in models.items()}, (boundary + 1) * proto["epochs_per_task"], images, labels,
        data.sample_id[rows], np.isin(data.labels[rows], old), class_mask(old, data.n_classes, device),
        {e: mask for e, (_, mask) in models.items()}, proto["lr"], taus=pcfg["taus"],
        batch_size=pcfg.get("batch_size", rt["probe_batch_size"]), device=device, bn_mode=pcfg["bn_mode"],
    )
    table.insert(2, "boundary", boundary)
    if pcfg["curvature"]:
        # dynamic memo m_i(t): the configured curvature under each checkpoint's native mask
        method = cfg["memo"]["score"] if cfg["memo"]["score"] in cfg["memo"]["methods"] else "exact_ggn"
        col = SCORE_COLUMNS[method]
        parts = []
        for epoch, (model, mask) in sorted(models.items()):
            inside = mask.cpu()[labels].numpy()
            c = curvature_scores(model, images[inside], labels[inside], torch.as_tensor(data.sample_id[rows][inside]),
                                 mask, [method], n_probes=cfg["memo"]["n_probes"], fd_step=cfg["memo"]["fd_step"],
                                 batch_size=cfg["memo"]["batch_size"], seed=cfg["memo"]["seed"], device=device)
            parts.append(c[["sample_id", col]].rename(columns={col: "curv_dyn"}).assign(epoch=epoch))
        table = table.merge(pd.concat(parts), on=["sample_id", "epoch"], how="left")
    io.write_parquet(table, probes, io.provenance(cfg, boundary=boundary, checkpoints=list(map(str, checkpoints))))


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
