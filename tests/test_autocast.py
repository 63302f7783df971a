"""protocol.autocast (memplast.train.epoch.autocast): bf16 autocast of the training forward only,
off by default and then bitwise the float32 step; recorded with the protocol in the provenance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memplast import runtime
from memplast.data import synthetic_train_set
from memplast.masks import seen_classes
from memplast.models import build_model, reinit
from memplast.train import DeviceData, train_epoch
from memplast.train.epoch import autocast


def _epoch(amp):
    p = synthetic_train_set(10, (3, 8, 8), 120)
    data = DeviceData(p, torch.device("cpu"))
    model = build_model("resnet18", 10, 3, 4)
    reinit(model, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses, _ = train_epoch(model, opt, data, np.arange(120), seen_classes(np.arange(10), 10, data.device), 40,
                            torch.Generator().manual_seed(0), None, amp=amp)  # fmt: skip
    return losses, model


def test_bf16_changes_the_forward_and_off_is_float32():
    ref_losses, ref = _epoch(None)
    off_losses, off = _epoch("none")
    assert np.array_equal(ref_losses, off_losses)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), off.state_dict().values()))
    bf_losses, bf = _epoch("bf16")
    assert np.all(np.isfinite(bf_losses)) and not np.array_equal(bf_losses, ref_losses)
    # the first batch (same weights): bf16 keeps ~3 significant digits per op; later steps diverge
    assert np.allclose(bf_losses[:40], ref_losses[:40], rtol=0.05)
    assert all(p.dtype == torch.float32 for p in bf.parameters())  # weights and optimizer stay float32


def test_bad_mode_names_the_key():
    with pytest.raises(ValueError, match="protocol.autocast 'fp8': use none or bf16"):
        autocast(torch.device("cpu"), "fp8")


def test_autocast_is_science_so_it_reruns_training_and_is_in_the_provenance(paper_config):
    """bf16 changes the numbers: kept in the training rules' params (a change reruns them) and so in
    the config slice every output's provenance records; off (the default) it is left out, so adding
    the knob reran nothing finished."""
    assert paper_config["protocol"]["autocast"] == "none"
    assert "autocast" not in runtime.rule_params(paper_config, ["protocol"], "base")["protocol"]
    bf16 = {**paper_config, "protocol": {**paper_config["protocol"], "autocast": "bf16"}}
    assert runtime.rule_params(bf16, ["protocol"], "base")["protocol"]["autocast"] == "bf16"
