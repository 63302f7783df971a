"""Continual backprop and UPGD against hand-computed steps on tiny networks; their state
round-trips bitwise; whole training tasks with them resume bitwise after a kill."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from memplast import algorithms as A
from memplast import grid
from memplast.models import ResNet18, SmallCNN, hidden_layers

CBP_CFG = {"replacement_rate": 0.0, "decay_rate": 0.9, "maturity_threshold": 0, "mode": "eq1"}


def _tiny(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(num_classes=3, in_channels=1, width=2)


def _acts(model, seed=1, n=5):
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x, return_acts=True).acts


def test_hidden_layers_map_units_to_their_next_layer():
    for model, n in ((ResNet18(10, 3, width=4), 17), (SmallCNN(10, 1, width=4), 4)):
        layers = hidden_layers(model)
        assert len(layers) == n
        acts = model(torch.randn(2, model.conv1.in_channels, 8, 8), return_acts=True).acts
        for L in layers:
            units = L.layer.weight.shape[0]
            assert L.next.weight.shape[1] == units and acts[L.act].shape[1] == units
            if L.bn is not None:
                assert L.bn.num_features == units
    resnet = ResNet18(10, 3, width=4)
    names = [L.name for L in hidden_layers(resnet)]
    assert not any("shortcut" in n for n in names) and hidden_layers(resnet)[-1].next is resnet.fc


def _hand_out(L):
    """mean_k |w_next[k, j, ...]| unit by unit."""
    w = L.next.weight.detach()
    return torch.stack([w[:, j].abs().mean() for j in range(w.shape[1])])


def _hand_feat(act):
    """mean |h_j| over batch and positions, unit by unit."""
    return torch.stack([act[:, j].abs().mean() for j in range(act.shape[1])])


def _hand_contribution(L, act):
    return _hand_out(L) * _hand_feat(act)


def test_cbp_utilities_follow_the_decayed_contribution_by_hand():
    model = _tiny()
    cbp = A.CBP(model, CBP_CFG, seed=0)
    a1, a2 = _acts(model, 1), _acts(model, 2)
    cbp(a1)
    cbp(a2)
    for i, L in enumerate(cbp.layers):
        c1, c2 = _hand_contribution(L, a1[L.act]), _hand_contribution(L, a2[L.act])
        torch.testing.assert_close(cbp.util[i], 0.9 * (0.1 * c1) + 0.1 * c2)


def test_cbp_reference_mode_sums_features_and_counts_every_unit_of_the_layer():
    """reference: F = sum over steps of (1 - decay) mean|h| (no decay), never reset on replacement;
    the count accumulates rate x all units of the layer once one is mature; the utility is
    mean|w_out| x F, computed on replacing steps only."""
    model = _tiny()
    cfg = {**CBP_CFG, "mode": "reference", "replacement_rate": 0.3, "maturity_threshold": 1}
    cbp = A.CBP(model, cfg, seed=0)
    acts = [_acts(model, s) for s in (1, 2, 3)]
    cbp(acts[0])  # age 1: nobody mature, no utility computed
    assert all((u == 0).all() for u in cbp.util) and all(a == 0.0 for a in cbp.accumulated)
    i = [L.name for L in cbp.layers].index("conv3")  # 8 units: 0.3 x 8 = 2.4 -> 2 now
    L = cbp.layers[i]
    feat = 0.1 * (_hand_feat(acts[0][L.act]) + _hand_feat(acts[1][L.act]))
    util = _hand_out(L) * feat
    cbp(acts[1])
    assert sorted(np.flatnonzero(cbp.age[i].numpy() == 0).tolist()) == sorted(np.argsort(util.numpy())[:2].tolist())
    assert cbp.accumulated[i] == pytest.approx(0.4)
    torch.testing.assert_close(cbp.feat[i], feat)  # the replaced units keep their sum
    cbp(acts[2])
    torch.testing.assert_close(cbp.feat[i], feat + 0.1 * _hand_feat(acts[2][L.act]))
    conv1 = [L.name for L in cbp.layers].index("conv1")  # 2 units: 0.6, then 1.2 -> one unit at step 3
    assert (cbp.age[conv1] == 0).sum() == 1 and cbp.accumulated[conv1] == pytest.approx(0.2)


def test_cbp_replaces_the_lowest_utility_mature_units_and_resets_them():
    model = _tiny()
    before = copy.deepcopy(model.state_dict())
    # rate 0.3 x 8 eligible units of conv3 = 2.4 -> 2 replaced now, 0.4 carried over
    cfg = {**CBP_CFG, "replacement_rate": 0.3, "maturity_threshold": 1}
    cbp = A.CBP(model, cfg, seed=0)
    acts = _acts(model)
    cbp(acts)  # age 1: nobody mature yet (age must exceed 1)
    assert all(a == 0.0 for a in cbp.accumulated)
    utils = [u.clone() for u in cbp.util]
    acts = _acts(model, 3)
    expected_util = [0.9 * u + 0.1 * _hand_contribution(L, acts[L.act]) for u, L in zip(utils, cbp.layers)]
    n = cbp(acts)
    i = [L.name for L in cbp.layers].index("conv3")
    lowest = np.argsort(expected_util[i].numpy(), kind="stable")[:2]
    replaced = sorted(np.flatnonzero(cbp.age[i].numpy() == 0).tolist())
    assert replaced == sorted(lowest.tolist())
    # the layers before and after conv3 replaced units too: their rows / columns are excluded below
    new_in = np.flatnonzero(cbp.age[i - 1].numpy() == 0)
    new_out = np.flatnonzero(cbp.age[i + 1].numpy() == 0)
    live_in = [c for c in range(4) if c not in new_in]
    live_out = [r for r in range(8) if r not in new_out]
    assert len(new_in) == 1 and len(new_out) == 2
    assert cbp.accumulated[i] == pytest.approx(0.4)
    # counts per layer: floor(0.3 x units); conv1 has 2 units (0.6 -> none yet)
    assert n == sum(int(0.3 * L.layer.weight.shape[0]) for L in cbp.layers) == 0 + 1 + 2 + 2
    # replaced units: new incoming weights, bias 0, BN reset, outgoing 0, utility and age 0
    for j in replaced:
        assert not torch.equal(model.conv3.weight[j], before["conv3.weight"][j])
        assert model.conv3.bias[j] == 0 and model.bn3.weight[j] == 1 and model.bn3.bias[j] == 0
        assert model.bn3.running_mean[j] == 0 and model.bn3.running_var[j] == 1
        assert cbp.util[i][j] == 0 and cbp.age[i][j] == 0
    assert (model.hidden.weight[live_out][:, replaced] == 0).all()
    kept = [j for j in range(8) if j not in replaced]
    assert (model.conv3.weight[kept][:, new_in] == 0).all()
    w3, b3 = model.conv3.weight.detach(), before["conv3.weight"]
    assert torch.equal(w3[kept][:, live_in], b3[kept][:, live_in])
    assert torch.equal(model.hidden.weight.detach()[live_out][:, kept], before["hidden.weight"][live_out][:, kept])
    assert (cbp.age[i][kept] == 2).all()


def test_cbp_fresh_weights_have_the_kaiming_scale():
    model = SmallCNN(num_classes=3, in_channels=1, width=64)
    with torch.no_grad():
        model.conv3.weight.fill_(5.0)
    cbp = A.CBP(model, CBP_CFG, seed=0)
    i = [L.name for L in cbp.layers].index("conv3")
    cbp.replace(i, torch.arange(256))
    expected = math.sqrt(2.0 / (128 * 9))  # Kaiming normal, fan-in, ReLU gain
    assert model.conv3.weight.std().item() == pytest.approx(expected, rel=0.01)
    assert abs(model.conv3.weight.mean().item()) < 0.01 * expected
    assert (model.hidden.weight == 0).all()  # every outgoing weight of conv3 is zero
    h = [L.name for L in cbp.layers].index("hidden")  # the hidden linear layer: ReLU gain too
    cbp.replace(h, torch.arange(256))
    assert model.hidden.weight.std().item() == pytest.approx(math.sqrt(2.0 / 256), rel=0.01)


def test_cbp_state_round_trips_bitwise():
    cfg = {**CBP_CFG, "replacement_rate": 0.05, "maturity_threshold": 2, "mode": "reference"}

    def steps(model, cbp, seeds):
        for s in seeds:
            cbp(_acts(model, s))

    m1 = _tiny()
    c1 = A.CBP(m1, cfg, seed=5)
    steps(m1, c1, range(10))
    state, weights = copy.deepcopy(c1.state_dict()), copy.deepcopy(m1.state_dict())
    steps(m1, c1, range(10, 30))
    m2 = _tiny(seed=9)
    m2.load_state_dict(weights)
    c2 = A.CBP(m2, cfg, seed=123)
    c2.load_state_dict(state)
    steps(m2, c2, range(10, 30))
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(c1.util, c2.util)) and c1.replaced == c2.replaced > 0


# --------------------------------------------------------------------------- UPGD
def _params():
    g = torch.Generator().manual_seed(0)
    hidden = nn.Parameter(torch.randn(3, 4, generator=g))
    out = nn.Parameter(torch.randn(5, generator=g))
    hidden.grad = torch.randn(3, 4, generator=g)
    out.grad = torch.randn(5, generator=g)
    return hidden, out


def _hand_upgd(params, grads, gated, lr, wd, beta_u, sigma, scale, seed, steps=1, adam=None):
    """Independent re-computation of ``steps`` UPGD steps with constant gradients: the gate divides
    the bias-corrected trace by the max of the raw one; Adam steps 2 lr with a decay of lr wd."""
    gen = torch.Generator().manual_seed(seed)
    theta = [p.detach().clone() for p in params]
    util = [torch.zeros_like(p) for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        for k in range(len(theta)):
            util[k] = beta_u * util[k] + (1 - beta_u) * (-grads[k] * theta[k])
        u_hat = [u / (1 - beta_u**t) for u in util]
        u_max = max(u.max() for u, gt in zip(util, gated) if gt)
        noise = torch.randn(sum(p.numel() for p in theta), generator=gen).split([p.numel() for p in theta])
        for k in range(len(theta)):
            gate = 1 - torch.sigmoid(u_hat[k] / u_max) if gated[k] else torch.full_like(theta[k], scale)
            d, step = grads[k], lr
            if adam:
                step = 2 * lr
                b1, b2, eps = adam
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                d = (m[k] / (1 - b1**t)) / ((v[k] / (1 - b2**t)).sqrt() + eps)
            theta[k] = theta[k] * (1 - lr * wd) - step * (d + sigma * noise[k].view_as(theta[k])) * gate
    return theta


@pytest.mark.parametrize("variant", ["sgd", "adam"])
@pytest.mark.parametrize("gating", ["full", "hidden_only", "output_only"])
def test_upgd_steps_match_the_hand_computation(variant, gating):
    hidden, out = _params()
    grads = [hidden.grad.clone(), out.grad.clone()]
    start = [hidden.detach().clone(), out.detach().clone()]
    gated_flags = {"full": [True, True], "hidden_only": [True, False], "output_only": [False, True]}[gating]
    gated = [p for p, f in zip((hidden, out), gated_flags) if f]
    other = [p for p, f in zip((hidden, out), gated_flags) if not f]
    opt = A.UPGD(
        gated,
        other,
        lr=0.1,
        weight_decay=0.01,
        beta_utility=0.9,
        sigma=0.05,
        variant=variant,
        betas=(0.8, 0.95),
        eps=1e-5,
        non_gated_scale=0.5,
        seed=7,
    )
    for _ in range(3):
        opt.step()
    # the optimizer draws noise in parameter-group order: gated first
    order = [k for k in range(2) if gated_flags[k]] + [k for k in range(2) if not gated_flags[k]]
    params = [torch.nn.Parameter(start[k].clone()) for k in order]
    expected = _hand_upgd(
        params,
        [grads[k] for k in order],
        [gated_flags[k] for k in order],
        0.1,
        0.01,
        0.9,
        0.05,
        0.5,
        7,
        steps=3,
        adam=(0.8, 0.95, 1e-5) if variant == "adam" else None,
    )
    got = [(hidden, out)[k] for k in order]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.detach(), e, rtol=1e-6, atol=1e-7)


def test_upgd_perturbation_has_scale_sigma_times_gate():
    p = nn.Parameter(torch.zeros(200_000))
    p.grad = torch.zeros_like(p)
    opt = A.UPGD([], [p], lr=0.5, weight_decay=0.0, sigma=1e-3, non_gated_scale=0.5, seed=0)
    opt.step()
    assert p.detach().std().item() == pytest.approx(0.5 * 0.5 * 1e-3, rel=0.01)
    # gated, zero utility everywhere: gate 1 - sigmoid(0) = 0.5
    q = nn.Parameter(torch.zeros(200_000))
    q.grad = torch.zeros_like(q)
    A.UPGD([q], [], lr=0.5, weight_decay=0.0, sigma=1e-3, seed=0).step()
    assert q.detach().std().item() == pytest.approx(0.5 * 0.5 * 1e-3, rel=0.01)


def test_upgd_protects_high_utility_weights():
    p = nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))
    # utility -g theta = 1, 0, -1: trace U = 0.5, 0, -0.5, bias-corrected 1, 0, -1, over the raw
    # max 0.5 (as the reference): 2, 0, -2 -> gates 1 - sig(2), 1/2, 1 - sig(-2)
    p.grad = torch.tensor([-1.0, 0.0, 1.0])
    A.UPGD([p], [], lr=1.0, weight_decay=0.0, sigma=0.0, beta_utility=0.5, seed=0).step()
    step = 1.0 - p.detach()
    torch.testing.assert_close(
        step, torch.tensor([-1 + torch.sigmoid(torch.tensor(2.0)), 0.0, 1 - torch.sigmoid(torch.tensor(-2.0))])
    )


def test_upgd_state_round_trips_bitwise_and_groups_split_at_the_head():
    model = _tiny()
    gated, other = A.upgd_groups(model, "hidden_only")
    assert {id(p) for p in other} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(gated) + len(other) == len(list(model.parameters()))
    cfg = {
        "gating": "full",
        "beta_utility": 0.999,
        "sigma": 1e-3,
        "variant": "adam",
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-5,
        "non_gated_scale": 0.5,
    }

    def steps(model, opt, seeds):
        for s in seeds:
            opt.zero_grad()
            model(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(s))).pow(2).mean().backward()
            opt.step()

    m1 = _tiny()
    o1 = A.make_upgd(m1, cfg, 0.01, 1e-4, seed=3)
    steps(m1, o1, range(3))
    state, weights = copy.deepcopy(o1.state_dict()), copy.deepcopy(m1.state_dict())
    steps(m1, o1, range(3, 8))
    m2 = _tiny(seed=4)
    m2.load_state_dict(weights)
    o2 = A.make_upgd(m2, cfg, 0.01, 1e-4, seed=99)
    o2.load_state_dict(state)
    steps(m2, o2, range(3, 8))
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())


# --------------------------------------------------------------------------- whole tasks
@pytest.fixture(scope="module")
def fast(demo_config):
    cfg = copy.deepcopy(demo_config)
    cfg["protocol"].update(epochs_per_task=4, lr_milestones=[2], state_every=2, batch_size=32)
    cfg["protocol"]["cbp"].update(replacement_rate=0.01, maturity_threshold=5)
    return cfg


@pytest.mark.parametrize("algorithm", ["cbp", "upgd", "upgd_cbp"])
def test_algorithm_tasks_resume_bitwise_and_log_replacements(tmp_path, fast, digits, one_thread, algorithm):
    from test_train import _run, _same, _weights

    name = f"order0/none/random/none/{algorithm}"
    _run(tmp_path / "ref", fast, digits, 0, algorithm=algorithm, name=name)
    ref_prev = str(tmp_path / "ref" / "t0" / "end.pt")
    ref_m, _ = _run(tmp_path / "ref", fast, digits, 1, prev=ref_prev, algorithm=algorithm, name=name)
    _run(tmp_path / "k", fast, digits, 0, algorithm=algorithm, name=name)
    prev = str(tmp_path / "k" / "t0" / "end.pt")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "k", fast, digits, 1, prev=prev, algorithm=algorithm, name=name, stop=4 + 3)
    m, _ = _run(tmp_path / "k", fast, digits, 1, prev=prev, algorithm=algorithm, name=name)
    assert _same(_weights(tmp_path / "k" / "t1" / "end.pt"), _weights(tmp_path / "ref" / "t1" / "end.pt"))
    pd.testing.assert_frame_equal(
        m[["epoch", "train_loss", "val_acc", "replaced"]], ref_m[["epoch", "train_loss", "val_acc", "replaced"]]
    )
    end = m[m.kind == "end"].iloc[0]
    assert end["replaced"] == m.loc[m.kind == "epoch", "replaced"].sum()
    state = torch.load(tmp_path / "k" / "t1" / "end.pt", weights_only=True)
    cbp = issubclass(A.ALGORITHMS[algorithm], A.ContinualBackprop)
    assert (end["replaced"] > 0) == cbp and (state["algorithm"] is not None) == cbp
    if issubclass(A.ALGORITHMS[algorithm], A.Upgd):
        assert "generator" in state["optimizer"] and all("utility" in s for s in state["optimizer"]["state"].values())


@pytest.mark.parametrize("algorithm", ["retrained", "head_reset"])
def test_reinitialisations_keep_momentum_unless_told_not_to(tmp_path, fast, digits, one_thread, algorithm):
    from test_train import _run

    cfg = copy.deepcopy(fast)
    cfg["protocol"].update(epochs_per_task=1, lr_milestones=[], early_stopping=False)
    _run(tmp_path, cfg, digits, 0)
    prev = str(tmp_path / "t0" / "end.pt")
    momentum = torch.load(prev, weights_only=True)["optimizer"]["state"]
    assert momentum  # task 0 left SGD momentum buffers
    name = f"order0/none/random/none/{algorithm}"
    ends = {}
    for keep in (True, False):
        cfg["protocol"]["keep_momentum_on_reset"] = keep
        out = tmp_path / str(keep)
        _run(out, cfg, digits, 1, prev=prev, algorithm=algorithm, name=name)
        ends[keep] = torch.load(out / "t1" / "end.pt", weights_only=True)["model"]
    # same re-initialised start, same batches: only the carried momentum differs
    assert not torch.equal(ends[True]["fc.weight"], ends[False]["fc.weight"])


class _Recorder(A.Algorithm):
    """A toy algorithm: every hook records its call; its state counts the steps of all tasks."""

    wants_acts = True

    def __init__(self, protocol, order_seed):
        super().__init__(protocol, order_seed)
        self.calls, self.steps, self.unpopped = [], 0, 0

    def make_optimizer(self, model):
        self.calls.append("make_optimizer")
        return super().make_optimizer(model)

    def attach(self, model, noise_generator):
        self.calls.append("attach")
        self.after_step = self.step

    def start_task(self, state, task):
        self.calls.append(f"start_task {task}")

    def step(self, acts):
        assert isinstance(acts, list) and all(a.min() >= 0 for a in acts)  # the batch's ReLU outputs
        self.steps += 1
        self.unpopped += 1

    def pop_replaced(self):
        n, self.unpopped = self.unpopped, 0
        return n

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.calls.append(f"load {state['steps']}")
        self.steps = state["steps"]


def test_a_new_algorithm_is_one_class_and_the_task_function_never_names_one(tmp_path, fast, digits, one_thread,
                                                                            monkeypatch):  # fmt: skip
    """Registering a class is all a new algorithm takes: run_task calls its hooks in the documented
    order, its state travels through the end state to the next task, its per-epoch count reaches the
    metrics; and no module of the training package mentions an algorithm by name."""
    import ast
    from pathlib import Path

    from conftest import run_one_task

    made = []
    monkeypatch.setitem(A.ALGORITHMS, "recorder", lambda p, s: made.append(_Recorder(p, s)) or made[-1])
    cfg = copy.deepcopy(fast)
    cfg["protocol"].update(epochs_per_task=2, lr_milestones=[], reset_momentum=False)
    m0, _ = run_one_task(tmp_path, cfg, digits, 0, algorithm="recorder")
    steps0 = made[0].steps
    from memplast.data import class_order

    n_task = int(((digits.split == "train") & np.isin(digits.labels, class_order(0, 10)[:2])).sum())
    assert made[0].calls == ["make_optimizer", "attach", "start_task 0"]
    assert steps0 == 2 * math.ceil(n_task / cfg["protocol"]["batch_size"])  # one call per SGD step
    assert m0.loc[m0.kind == "epoch", "replaced"].sum() == steps0  # pop_replaced once per epoch
    assert torch.load(tmp_path / "t0" / "end.pt", weights_only=True)["algorithm"] == {"steps": steps0}
    run_one_task(tmp_path, cfg, digits, 1, prev=str(tmp_path / "t0" / "end.pt"), algorithm="recorder")
    assert made[1].calls == ["make_optimizer", f"load {steps0}", "attach", "start_task 1"]
    assert made[1].steps > steps0
    names = set(A.ALGORITHMS) - {"recorder"}
    assert names == set(grid.ALGORITHMS)  # the registry implements exactly the run factor's vocabulary
    train_pkg = Path(A.__file__).parent / "train"
    for path in train_pkg.glob("*.py"):
        strings = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}
        assert not strings & names, f"{path.name} names an algorithm: {strings & names}"
