"""Per-sample input-curvature of one scorer checkpoint, every configured method."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import numpy as np  # noqa: E402
import torch  # noqa: E402

from memplast import io  # noqa: E402
from memplast.augment import normalize  # noqa: E402
from memplast.checkpoints import load_checkpoint  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402
from memplast.curvature import checkpoint_seed, curvature_scores, strict_numerics  # noqa: E402
from memplast.data import load_prepared  # noqa: E402
from memplast.device import resolve_device  # noqa: E402
from memplast.masks import class_mask  # noqa: E402
from memplast.runtime import resolve as runtime_of  # noqa: E402


def main(prepared: str, checkpoint: str, curvature: str, cfg: dict, runtime: dict | None = None):
    """Score the samples of memo.splits at CHECKPOINT with memo.methods; write CURVATURE."""
    memo = cfg["memo"]
    device = resolve_device(runtime_of(cfg, runtime)["device"])
    numerics = strict_numerics(device, cfg["protocol"]["deterministic"])
    data = load_prepared(prepared)
    model, meta = load_checkpoint(checkpoint, device)
    seed = checkpoint_seed(memo["seed"], meta["epoch"])  # own probes per checkpoint: honest grid-mean SE
    rows = np.flatnonzero(np.isin(data.split, memo["splits"]))
    images = normalize(torch.as_tensor(data.images[rows]), data.mean, data.std)
    mask = class_mask(range(data.n_classes), data.n_classes, device)
    table = curvature_scores(
        model,
        images,
        torch.as_tensor(data.labels[rows]),
        torch.as_tensor(data.sample_id[rows]),
        mask,
        memo["methods"],
        n_probes=memo["n_probes"],
        fd_step=memo["fd_step"],
        batch_size=memo["batch_size"],
        seed=seed,
        device=device,
    )
    table.insert(1, "split", data.split[rows].astype(str))
    table.insert(2, "epoch", meta["epoch"])
    prov = io.provenance(cfg, checkpoint=checkpoint, epoch=meta["epoch"], probe_seed=seed, numerics=numerics)
    io.write_parquet(table, curvature, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
