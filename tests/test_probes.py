"""Per-sample probes: every quantity against an independent per-sample autograd loop."""

import copy
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import randomize_bn
from torch import nn

from memplast import probes
from memplast.masks import class_mask, per_sample_loss
from memplast.models import Forward, ResNet18, SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")

C = 10
OLD = class_mask(range(4), C)  # task k
NEXT = class_mask(range(6), C)  # task k+1


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(SmallCNN(C, 1, width=4).double(), seed)


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(ResNet18(C, 3, width=2).double(), seed)


def data(shape, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0, 3, 5])[:n]
    return x, y


MODELS = {"small_cnn": (small_cnn, (1, 8, 8)), "resnet18": (tiny_resnet, (3, 8, 8))}


def reference(model, x, y, masks, direction=None):
    """Per-sample loop with plain autograd: loss by column selection (models.per_sample_loss),
    gradients w.r.t. parameters and input, g.G and G^T H G by double backward."""
    model = copy.deepcopy(model).eval()
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True)
    out = {
        k: []
        for k in (
            "loss",
            "margin",
            "correct",
            "confidence",
            "grad_norm",
            "input_grad_norm",
            "dot",
            "ghg",
            "dormant_t0.01",
            "dormant_t0.01_layers",
            "dormant_score_t0.1",
            "dormant_score_t0.1_layers",
        )
    }
    for i in range(len(y)):
        with torch.no_grad():
            acts = model(x[i : i + 1], return_acts=True).acts
        rates = [[(a[0, c] > 0).double().mean().item() for c in range(a.shape[1])] for a in acts]
        out["dormant_t0.01"].append(sum(r <= 0.01 for layer in rates for r in layer) / sum(map(len, rates)))
        out["dormant_t0.01_layers"].append([sum(r <= 0.01 for r in layer) / len(layer) for layer in rates])
        means = [[a[0, c].mean().item() for c in range(a.shape[1])] for a in acts]  # a_u: spatial mean
        scores = [[m / (sum(layer) / len(layer)) if sum(layer) > 0 else 0.0 for m in layer] for layer in means]
        out["dormant_score_t0.1"].append(sum(v <= 0.1 for layer in scores for v in layer) / sum(map(len, scores)))
        out["dormant_score_t0.1_layers"].append([sum(v <= 0.1 for v in layer) / len(layer) for layer in scores])
        mask = masks[i]
        if not mask[y[i]]:
            for k, v in out.items():
                if not k.startswith("dormant"):
                    v.append(math.nan)
            continue
        xi = x[i : i + 1].clone().requires_grad_()
        z = model(xi)
        loss = per_sample_loss(z, y[i : i + 1], mask)[0]
        zs = z[0, mask].detach()
        pos = int(mask[: y[i]].sum())
        others = torch.cat([zs[:pos], zs[pos + 1 :]])
        out["loss"].append(loss.item())
        out["margin"].append((zs[pos] - others.max()).item())
        out["correct"].append(float(zs.argmax() == pos))
        out["confidence"].append(torch.softmax(zs, 0)[pos].item())
        grads = torch.autograd.grad(loss, [xi, *params], create_graph=True)
        out["input_grad_norm"].append(grads[0].norm().item())
        out["grad_norm"].append(torch.sqrt(sum(g.square().sum() for g in grads[1:])).item())
        if direction is not None:
            dot = sum((g * direction[n]).sum() for g, n in zip(grads[1:], names, strict=True))
            hg = torch.autograd.grad(dot, params)
            out["dot"].append(dot.item())
            out["ghg"].append(sum((h * direction[n]).sum() for h, n in zip(hg, names, strict=True)).item())
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items() if v}


def close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_quantity_matches_per_sample_loop(arch):
    build, shape = MODELS[arch]
    model = build()
    x, y = data(shape)
    is_old = OLD[y]
    eval_masks = torch.where(is_old[:, None], OLD, NEXT)  # a task k+1 checkpoint
    G = {n: 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    got = probes.probe_checkpoint(model, x, y, eval_masks, NEXT, batch_size=4, direction=G, eta=0.3)
    ref = reference(model, x, y, eval_masks, G)
    for k in (
        "loss",
        "margin",
        "correct",
        "confidence",
        "grad_norm",
        "input_grad_norm",
        "dormant_t0.01",
        "dormant_score_t0.1",
    ):
        close(got[k], ref[k])
    for family in ("dormant_t0.01", "dormant_score_t0.1"):
        layers = ref[f"{family}_layers"]
        close(torch.stack([got[f"{family}_L{j}"] for j in range(layers.shape[1])], 1), layers)
        assert f"{family}_L{layers.shape[1]}" not in got and layers.std(0).max() > 0
    close(got["align_dot"], ref["dot"])
    g_norm = torch.sqrt(sum(v.square().sum() for v in G.values()))
    close(got["align_cos"], ref["dot"] / (ref["grad_norm"] * g_norm))
    close(got["pred_forget"], -0.3 * ref["dot"] + 0.3**2 / 2 * ref["ghg"])
    native = reference(model, x, y, NEXT.expand(len(y), -1))
    for k in ("loss", "margin", "correct", "confidence"):
        close(got[f"{k}_native"], native[k])
    assert torch.isfinite(got["loss"]).all()
    assert (got["loss"][is_old] < got["loss_native"][is_old]).all()  # more classes compete under the native mask


def test_new_class_samples_at_task_k_checkpoint_have_no_loss():
    model = small_cnn()
    x, y = data((1, 8, 8))
    is_old = OLD[y]
    eval_masks = torch.where(is_old[:, None], OLD, OLD)  # task k checkpoint: native mask = old mask
    got = probes.probe_checkpoint(model, x, y, eval_masks, OLD, batch_size=4)
    for k in ("loss", "margin", "correct", "confidence", "loss_native", "grad_norm", "input_grad_norm"):
        assert torch.isnan(got[k][~is_old]).all(), k
        assert torch.isfinite(got[k][is_old]).all(), k
    assert torch.isfinite(got["dormant_t0"]).all()
    close(got["grad_norm"][is_old], reference(model, x, y, eval_masks)["grad_norm"][is_old])


def test_alignment_jvp_equals_explicit_gradients_and_double_backward():
    model = tiny_resnet(3)
    x, y = data((3, 8, 8), seed=4)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    G = {n: torch.randn_like(p) for n, p in params.items()}
    masks = probes.row_masks(NEXT, len(y))
    model.eval()

    def loss_fn(p):
        return per_sample_loss(torch.func.functional_call(model, {**p, **buffers}, (x,)), y, masks)

    dot, ghg = probes.directional_terms(loss_fn, params, G, second_order=True)
    dot_only, none = probes.directional_terms(loss_fn, params, G)
    assert none is None
    ref = reference(model, x, y, masks, G)  # explicit per-sample gradients, Hessian by double backward
    close(dot, ref["dot"])
    close(dot_only, ref["dot"])
    close(ghg, ref["ghg"])


def test_mean_gradient_is_mean_of_per_sample_gradients():
    model = small_cnn(2)
    x, y = data((1, 8, 8))
    G = probes.mean_gradient(model, x, y, NEXT, batch_size=4)
    ref = copy.deepcopy(model).eval()
    per_sample_loss(ref(x), y, NEXT).mean().backward()
    for n, p in ref.named_parameters():
        close(G[n], p.grad)


class HandModel(nn.Module):
    """ReLU inputs set by the input: acts = [relu(x) (N x 4 x 1 x 1000), relu(fc(pooled))], logits = bias."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3).double()
        self.head = nn.Linear(3, C).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
            self.head.weight.zero_()
            self.head.bias.copy_(torch.arange(C, dtype=torch.float64) / 4)

    def forward(self, x, return_acts=False):
        h1 = torch.relu(x)
        h2 = torch.relu(self.fc(h1.mean((2, 3))))
        logits = self.head(h2)
        return Forward(logits, [h1, h2], h2) if return_acts else logits


def hand_input(n):
    """Channel rates 0, 0.001, 0.01, 0.011 (of 1000 positions)."""
    x = -torch.ones(n, 4, 1, 1000, dtype=torch.float64)
    x[:, 1, 0, :1] = 1
    x[:, 2, 0, :10] = 1
    x[:, 3, 0, :11] = 1
    return x


def test_dormant_proportions_on_hand_built_activations():
    x = hand_input(2)
    x[1, 0, 0, :500] = 2.0  # sample 1: channel 0 active at half the positions
    got = probes.probe_checkpoint(HandModel(), x, torch.tensor([0, 1]), OLD, OLD)
    # fc units: relu(m0), relu(-m0), relu(-1) with m0 = mean of relu(channel 0) = 0 (sample 0), 1 (sample 1)
    # sample 0: conv dormant at tau 0 / 1e-3 / 1e-2: 1 / 2 / 3 of 4; fc: all 3 units dead
    # sample 1: conv: 0 / 1 / 2 of 4; fc: units 1 and 2 dead
    expect = {"0": ([1, 0], [3, 2]), "0.001": ([2, 1], [3, 2]), "0.01": ([3, 2], [3, 2])}
    for tau, (conv, fc) in expect.items():
        close(got[f"dormant_t{tau}_L0"], torch.tensor(conv, dtype=torch.float64) / 4)
        close(got[f"dormant_t{tau}_L1"], torch.tensor(fc, dtype=torch.float64) / 3)
        close(
            got[f"dormant_t{tau}"],
            torch.tensor([c + f for c, f in zip(conv, fc, strict=True)], dtype=torch.float64) / 7,
        )
    only = probes.dormant_props([torch.tensor([[0.0, 1.0, -2.0]])], taus=[0.5])
    assert set(only) == {"dormant_t0.5", "dormant_t0.5_L0"} and float(only["dormant_t0.5"][0]) == pytest.approx(2 / 3)


def state_snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_unchanged(model, snap):
    state, flags, req = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("bn_mode", probes.BN_MODES)
def test_probing_leaves_checkpoint_and_buffers_untouched(bn_mode):
    model = tiny_resnet()
    model.train()
    model.blocks[0].eval()  # mixed flags must come back as they were
    model.conv1.bias.requires_grad_(False)
    snap = state_snapshot(model)
    x, y = data((3, 8, 8))
    G = probes.mean_gradient(model, x, y, NEXT, batch_size=4, bn_mode=bn_mode)
    probes.probe_checkpoint(model, x, y, NEXT, NEXT, batch_size=4, bn_mode=bn_mode, direction=G, eta=0.1)
    assert_unchanged(model, snap)


def test_frozen_parameters_are_left_out_of_grad_norm():
    model = small_cnn()
    model.conv1.weight.requires_grad_(False)
    model.bn2.requires_grad_(False)
    x, y = data((1, 8, 8))
    got = probes.probe_checkpoint(model, x, y, NEXT, NEXT, batch_size=5)
    close(got["grad_norm"], reference(model, x, y, probes.row_masks(NEXT, len(y)))["grad_norm"])


def test_results_identical_for_any_batch_size():
    model = tiny_resnet()
    x, y = data((3, 8, 8))
    masks = torch.where(OLD[y][:, None], OLD, NEXT)
    G = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    runs = [probes.probe_checkpoint(model, x, y, masks, NEXT, batch_size=b, direction=G, eta=0.1) for b in (1, 4, 9)]
    for other in runs[1:]:
        assert other.keys() == runs[0].keys()
        for k in runs[0]:
            close(other[k], runs[0][k], tol=1e-10)


def batch_stat_copy(model, x):
    """Reference for bn_mode="train": a copy whose running statistics are the batch statistics,
    obtained from a real train-mode forward with momentum 1 (unbiased -> biased variance)."""
    ref = copy.deepcopy(model)
    sizes = {}
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
            m.register_forward_hook(lambda mod, inp, out: sizes.__setitem__(mod, inp[0].numel() // inp[0].shape[1]))
    ref.train()
    with torch.no_grad():
        ref(x)
    for m, n in sizes.items():
        m.running_var.mul_((n - 1) / n)
        m._forward_hooks.clear()
    return ref.eval()


def test_bn_train_mode_uses_batch_statistics_and_differs_from_eval():
    model = small_cnn()
    x, y = data((1, 8, 8))
    snap = state_snapshot(model)
    train = probes.probe_checkpoint(model, x, y, NEXT, NEXT, batch_size=len(y), bn_mode="train")
    evald = probes.probe_checkpoint(model, x, y, NEXT, NEXT, batch_size=len(y))
    assert_unchanged(model, snap)
    assert not torch.allclose(train["loss"], evald["loss"])
    with torch.no_grad():
        train_forward = copy.deepcopy(model).train()(x)  # genuine train-mode BatchNorm
    close(train["loss"], per_sample_loss(train_forward, y, NEXT))
    ref = reference(batch_stat_copy(model, x), x, y, probes.row_masks(NEXT, len(y)))
    close(train["grad_norm"], ref["grad_norm"])
    close(train["input_grad_norm"], ref["input_grad_norm"])
    with pytest.raises(ValueError, match="bn_mode"):
        probes.probe_checkpoint(model, x, y, NEXT, NEXT, bn_mode="batch")


def test_unsupported_layer_is_refused():
    class WithLayerNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(4)
            self.fc = nn.Linear(4, C)

        def forward(self, x, return_acts=False):
            h = torch.relu(self.norm(x))
            return Forward(self.fc(h), [h], h) if return_acts else self.fc(h)

    with pytest.raises(NotImplementedError, match="LayerNorm"):
        probes.probe_checkpoint(WithLayerNorm(), torch.randn(2, 4), torch.tensor([0, 1]), OLD, OLD)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(C, C)

        def forward(self, x, return_acts=False):
            h = torch.relu(self.fc(x))
            z = self.fc(h)
            return Forward(z, [h], h) if return_acts else z

    with pytest.raises(NotImplementedError, match="called twice"):
        probes.probe_checkpoint(Shared(), torch.randn(2, C), torch.tensor([0, 1]), OLD, OLD)


def test_graded_dormancy_scores_on_hand_built_activations():
    """s_u = a_u / mean over the layer of a (a = spatial mean), fraction with s_u <= tau."""
    conv = torch.zeros(2, 4, 2, 2, dtype=torch.float64)
    for c, a in enumerate([0.0, 0.02, 0.08, 3.9]):  # sample 0: channel means a_u, layer mean 1
        conv[0, c, 0, 0] = 4 * a  # one position of four
    conv[1] = 0.0  # sample 1: a silent layer, every unit dormant
    fc = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 2.0]], dtype=torch.float64)  # means 1/3 and 1
    got = probes.dormant_scores([conv, fc], taus=(0.0, 0.025, 0.1))
    close(got["dormant_score_t0_L0"], torch.tensor([1 / 4, 1.0], dtype=torch.float64))
    close(got["dormant_score_t0.025_L0"], torch.tensor([2 / 4, 1.0], dtype=torch.float64))
    close(got["dormant_score_t0.1_L0"], torch.tensor([3 / 4, 1.0], dtype=torch.float64))
    for tau in ("0", "0.025", "0.1"):  # fc: s = (0, 0, 3) and (0.5, 0.5, 2)
        close(got[f"dormant_score_t{tau}_L1"], torch.tensor([2 / 3, 0.0], dtype=torch.float64))
    close(got["dormant_score_t0.1"], torch.tensor([(3 + 2) / 7, 4 / 7], dtype=torch.float64))
    # the rate-based definition cannot tell channels 1-3 apart on 4 positions: all active at 1/4
    rates = probes.dormant_props([conv, fc], taus=(0.0, 0.025, 0.1))
    assert torch.equal(rates["dormant_t0_L0"], rates["dormant_t0.1_L0"])


def test_degenerate_threshold_warning_fires_once_where_thresholds_coincide(caplog):
    g = torch.Generator().manual_seed(0)
    small_map = torch.relu(torch.randn(50, 6, 4, 4, generator=g, dtype=torch.float64) - 1.0)  # 16 positions
    shift = torch.tensor([0.0, 1.5, 2.5, 3.0, 3.5, 4.5], dtype=torch.float64)[None, :, None, None]
    shift = shift + 0.5 * torch.randn(50, 6, 1, 1, generator=g, dtype=torch.float64)  # rates differ by sample
    large_map = torch.relu(torch.randn(50, 6, 40, 40, generator=g, dtype=torch.float64) - shift)  # 1600 positions
    table = pd.DataFrame(
        {
            k: v.numpy()
            for k, v in {
                **probes.dormant_props([small_map, large_map]),
                **probes.dormant_scores([small_map, large_map]),
            }.items()
        }
    )
    # tau x 16 < 1 for tau = 0.001 and 0.01: "active on <= tau of the positions" = "never active"
    assert table["dormant_t0.01_L1"].ne(table["dormant_t0_L1"]).any()  # 1600 positions: they differ
    with caplog.at_level(logging.WARNING, logger="memplast.probes"):
        found = probes.warn_degenerate(table, "test")
    assert found == ["dormant_t0_L0 == dormant_t0.001_L0", "dormant_t0.001_L0 == dormant_t0.01_L0"]
    assert len([r for r in caplog.records if "identical columns" in r.getMessage()]) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memplast.probes"):
        assert probes.warn_degenerate(table.drop(columns=[c for c in table if c.endswith("_L0")])) == []
    assert not caplog.records


def boundary_inputs():
    """Two checkpoints of task k (epochs 3, 4 = E_k) and two of task k+1 (5, 6)."""
    x, y = data((1, 8, 8))
    ckpts = {e: small_cnn(seed=e) for e in (3, 4, 5, 6)}
    masks = {3: OLD, 4: OLD, 5: NEXT, 6: NEXT}
    return ckpts, x, y, masks


def features_of(model, x):
    return copy.deepcopy(model).eval()(x, return_acts=True).features.detach()


def test_probe_boundary_table(caplog):
    ckpts, x, y, masks = boundary_inputs()
    ids = np.arange(100, 100 + len(y))
    is_old = OLD[y].numpy()
    lazy = {e: (lambda m=m: m) for e, m in ckpts.items()}  # loaders are accepted too
    with caplog.at_level(logging.WARNING, logger="memplast.probes"):
        df = probes.probe_boundary(
            lazy, 4, x, y, ids, is_old, OLD, masks, next_task_lr=0.2, batch_size=4, progress=False
        )
    # 8 x 8 inputs: tau x positions < 1 for the rate thresholds of the conv layers -> one warning
    assert len([r for r in caplog.records if "identical columns" in r.getMessage()]) == 1
    dormant = [c for c in df.columns if c.startswith("dormant_")]
    assert list(df.columns) == [
        "sample_id",
        "epoch",
        "role",
        "best_epoch",
        "label",
        "is_old",
        "loss",
        "margin",
        "correct",
        "confidence",
        "loss_native",
        "margin_native",
        "correct_native",
        "confidence_native",
        "grad_norm",
        "input_grad_norm",
        *dormant,
        "drift",
        "align_dot",
        "align_cos",
        "pred_forget",
    ]
    assert dormant[:3] == ["dormant_t0", "dormant_t0.001", "dormant_t0.01"] and "dormant_t0.01_L3" in dormant
    assert "dormant_score_t0.025" in dormant and "dormant_score_t0.1_L3" in dormant
    assert len(df) == 4 * len(y) and sorted(df["epoch"].unique()) == [3, 4, 5, 6]
    assert (df["best_epoch"] == 4).all() and df.groupby("epoch")["role"].first().to_dict() == {
        3: "before",
        4: "before",
        5: "after",
        6: "after",
    }
    new = ~df["is_old"]
    assert df.loc[new & (df["epoch"] <= 4), "loss"].isna().all()
    assert df.loc[new & (df["epoch"] >= 5), "loss"].notna().all()
    assert df[dormant].notna().all(axis=None)
    at = df["epoch"] == 4
    assert df.loc[~at, ["align_dot", "align_cos", "pred_forget"]].isna().all(axis=None)
    assert df.loc[at & ~new, ["align_dot", "align_cos", "pred_forget"]].notna().all(axis=None)
    assert df.loc[df["epoch"] == 3, "drift"].isna().all()

    # old samples at E_k+1: eval mask = old mask, native = next mask; new samples: both = next mask
    e5 = df[df["epoch"] == 5].reset_index(drop=True)
    masks5 = torch.where(OLD[y][:, None], OLD, NEXT)
    close(torch.tensor(e5["loss"].to_numpy()), reference(ckpts[5], x, y, masks5)["loss"])
    close(torch.tensor(e5["loss_native"].to_numpy()), reference(ckpts[5], x, y, probes.row_masks(NEXT, len(y)))["loss"])

    # drift: distance of penultimate features to the previous probed epoch
    feats = {e: features_of(m, x) for e, m in ckpts.items()}
    close(torch.tensor(df.loc[df["epoch"] == 6, "drift"].to_numpy()), (feats[6] - feats[5]).norm(dim=1))
    close(torch.tensor(df.loc[df["epoch"] == 5, "drift"].to_numpy()), (feats[5] - feats[4]).norm(dim=1))

    # G = mean gradient of the task-(k+1) loss over the new-class samples at E_k
    ref_model = copy.deepcopy(ckpts[4]).eval()
    per_sample_loss(ref_model(x[~OLD[y]]), y[~OLD[y]], NEXT).mean().backward()
    G = {n: p.grad for n, p in ref_model.named_parameters()}
    ref = reference(ckpts[4], x, y, probes.row_masks(OLD, len(y)), G)
    e4 = df[at].reset_index(drop=True)
    close(torch.tensor(e4["align_dot"].to_numpy()), ref["dot"])
    close(torch.tensor(e4["pred_forget"].to_numpy()), -0.2 * ref["dot"] + 0.02 * ref["ghg"])


def test_probe_boundary_on_the_path_when_the_best_epoch_precedes_the_end():
    """E_k = 6, best epoch B_k = 3: before-window 2, 3; live last epoch 6 (discarded by the
    restore); after-window 7, 8 starts from B_k. Drift at 7 is measured from B_k, the live row's
    drift is ||h_L - h_B||, and alignment is taken at B_k."""
    x, y = data((1, 8, 8))
    path = {e: small_cnn(seed=e) for e in (2, 3, 7, 8)}
    live = small_cnn(seed=6)
    masks = {2: OLD, 3: OLD, 7: NEXT, 8: NEXT}
    is_old = OLD[y].numpy()
    df = probes.probe_boundary(
        path,
        6,
        x,
        y,
        np.arange(len(y)),
        is_old,
        OLD,
        masks,
        next_task_lr=0.2,
        batch_size=5,
        progress=False,
        best_epoch=3,
        live=live,
    )
    roles = df.groupby(["epoch", "role"]).size().index.tolist()
    assert roles == [(2, "before"), (3, "before"), (6, "live"), (7, "after"), (8, "after")]
    assert (df["best_epoch"] == 3).all()
    feats = {e: features_of(m, x) for e, m in path.items()} | {"live": features_of(live, x)}
    rows = {
        r: df[(df["epoch"] == e) & (df["role"] == r)].reset_index(drop=True)
        for e, r in ((3, "before"), (6, "live"), (7, "after"))
    }
    close(torch.tensor(rows["after"]["drift"].to_numpy()), (feats[7] - feats[3]).norm(dim=1))
    close(torch.tensor(rows["live"]["drift"].to_numpy()), (feats["live"] - feats[3]).norm(dim=1))
    close(
        torch.tensor(rows["live"]["loss"].to_numpy()),
        reference(live, x, y, torch.where(OLD[y][:, None], OLD, OLD))["loss"],
    )
    assert rows["before"].loc[is_old, "align_dot"].notna().all() and rows["live"]["align_dot"].isna().all()
    with pytest.raises(ValueError, match="consecutive"):
        probes.probe_boundary(
            {e: path[e] for e in (2, 7, 8)} | {4: path[3]},
            6,
            x,
            y,
            np.arange(len(y)),
            is_old,
            OLD,
            masks | {4: OLD},
            0.2,
            progress=False,
            best_epoch=4,
        )
    with pytest.raises(ValueError, match="live"):
        probes.probe_boundary(path, 3, x, y, np.arange(len(y)), is_old, OLD, masks, 0.2, progress=False, live=live)


def test_probe_boundary_rejects_inconsistent_inputs():
    ckpts, x, y, masks = boundary_inputs()
    ids = np.arange(len(y))
    is_old = OLD[y].numpy()
    with pytest.raises(ValueError, match="is_old"):
        probes.probe_boundary(ckpts, 4, x, y, ids, ~is_old, OLD, masks, 0.1, progress=False)
    with pytest.raises(ValueError, match="best epoch"):
        probes.probe_boundary(ckpts, 4, x, y, ids, is_old, OLD, masks, 0.1, progress=False, best_epoch=2)
    with pytest.raises(ValueError, match="native mask"):
        probes.probe_boundary(ckpts, 4, x, y, ids, is_old, OLD, {3: OLD, 4: OLD}, 0.1, progress=False)


def test_probe_script_refuses_a_dynamic_memo_without_its_method(demo_config):
    """No silent substitution: probes.curvature with memo.score outside memo.methods is an error naming memo.score."""
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "probe.py"), run_name="test")["main"]
    cfg = {k: copy.deepcopy(demo_config[k]) for k in ("protocol", "probes", "memo")}
    cfg["probes"]["curvature"] = True
    cfg["memo"].update(score="csl", methods=["exact_ggn"])
    with pytest.raises(ValueError, match=r"memo\.score='csl'"):
        main("missing.npz", "missing.csv", "missing.parquet", [], "out.parquet", 0, cfg)


def test_probe_script_for_several_boundaries_needs_one_output_and_one_window_each(demo_config):
    """probes.jobs: run passes a list of boundaries: a wrong number of outputs or checkpoints is an
    error naming the fix, before any data is read."""
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "probe.py"), run_name="test")["main"]
    cfg = {k: copy.deepcopy(demo_config[k]) for k in ("protocol", "probes", "memo")}
    seven = [f"c{i}.pt" for i in range(7)]  # window 3: 2 w + 1 = 7 checkpoints per boundary
    with pytest.raises(ValueError, match="1 outputs for the boundaries \\[0, 1\\]; give one probe table per boundary"):
        main("missing.npz", "missing.csv", "missing.parquet", seven * 2, ["b0.parquet"], [0, 1], cfg)
    for wrong in (seven, seven * 2 + ["c7.pt"], seven[:6] * 2):
        with pytest.raises(ValueError, match=rf"{len(wrong)} checkpoints for the boundaries \[0, 1\]; .* 2 w \+ 1 = 7"):
            main("missing.npz", "missing.csv", "missing.parquet", wrong, ["b0.parquet", "b1.parquet"], [0, 1], cfg)
