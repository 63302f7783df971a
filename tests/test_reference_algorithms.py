"""memplast's CBP and UPGD against independent re-statements of the reference implementations.

The re-statements below follow the reference code line by line, not memplast's:
- ``RestatedResGnT``: Dohare et al.'s ``lop/algos/res_gnt.py`` (``ResGnT``, as
  ``lop/incremental_cifar`` drives it: features = every block's ReLU outputs with the last map
  replaced by the pooled features, ``gen_and_test`` after ``optim.step()``);
- ``RestatedFirstOrderGlobalUPGD`` / ``RestatedAdaptiveUPGD``: Elsayed & Mahmood's
  ``core/optim/weight_upgd/first_order.py`` and ``core/run/rl/adaupgd.py``.
The only deliberate difference is where random draws come from (a seeded generator shared by
convention instead of the global RNG): replacement weights one ``normal_`` per replacing layer in
layer order, UPGD noise one N(0, 1) vector over all parameters in order.
"""

from __future__ import annotations

from math import sqrt

import pytest
import torch
import torch.nn.functional as F
from torch.nn import BatchNorm2d, Conv2d, Linear

from memplast import algorithms as A
from memplast.models import ResNet18, SmallCNN


# --------------------------------------------------------------------------- CBP
class RestatedResGnT:
    """``ResGnT`` with util_type 'contribution' and hidden_activation 'relu'."""

    def __init__(self, net, decay_rate, replacement_rate, maturity_threshold, generator):
        self.weight_layers, self.bn_layers = [], []
        self._collect(net)
        self.num_hidden_layers = len(self.weight_layers) - 1
        self.decay_rate, self.replacement_rate = decay_rate, replacement_rate
        self.maturity_threshold, self.generator = maturity_threshold, generator
        sizes = [self.weight_layers[i].weight.shape[0] for i in range(self.num_hidden_layers)]
        self.util = [torch.zeros(n) for n in sizes]
        self.ages = [torch.zeros(n) for n in sizes]
        self.mean_feature_mag = [torch.zeros(n) for n in sizes]
        self.accumulated = [0 for _ in sizes]
        self.num_new = [replacement_rate * n for n in sizes]
        gain = torch.nn.init.calculate_gain("relu")
        self.stds = [gain * sqrt(1 / self.weight_layers[i].weight[0].numel()) for i in range(self.num_hidden_layers)]

    def _collect(self, module):
        """get_weight_layers: convs and linears in module order, BatchNorms apart, the projection
        shortcut skipped (the reference's ``downsample`` is memplast's ``shortcut``)."""
        if isinstance(module, Conv2d | Linear):
            self.weight_layers.append(module)
        elif isinstance(module, BatchNorm2d):
            self.bn_layers.append(module)
        else:
            for name, child in module.named_children():
                if name != "shortcut":
                    self._collect(child)

    @torch.no_grad()
    def test_features(self, features):
        to_replace = [torch.empty(0, dtype=torch.long) for _ in range(self.num_hidden_layers)]
        for i in range(self.num_hidden_layers):
            self.ages[i] += 1
            dims = (0,) if features[i].dim() == 2 else (0, 2, 3)
            self.mean_feature_mag[i] += (1 - self.decay_rate) * features[i].abs().mean(dim=dims)
            eligible = torch.where(self.ages[i] > self.maturity_threshold)[0]
            if eligible.shape[0] == 0:
                continue
            self.accumulated[i] += self.num_new[i]
            k = int(self.accumulated[i])
            self.accumulated[i] -= k
            if k == 0:
                continue
            nxt = self.weight_layers[i + 1].weight
            out_mag = nxt.abs().mean(dim=0) if nxt.dim() == 2 else nxt.abs().mean(dim=(0, 2, 3))
            self.util[i] = out_mag * self.mean_feature_mag[i]
            new = eligible[torch.topk(-self.util[i][eligible], k)[1]]
            self.util[i][new] = 0
            to_replace[i] = new
        return to_replace

    @torch.no_grad()
    def gen_new_features(self, to_replace):
        for i, idx in enumerate(to_replace):
            if len(idx) == 0:
                continue
            cur, nxt, bn = self.weight_layers[i], self.weight_layers[i + 1], self.bn_layers[i]
            cur.weight[idx, :] *= 0.0
            cur.weight[idx, :] += torch.empty([len(idx), *cur.weight.shape[1:]]).normal_(
                std=self.stds[i], generator=self.generator
            )
            cur.bias[idx] *= 0.0
            nxt.weight[:, idx] = 0
            self.ages[i][idx] = 0
            bn.bias[idx] *= 0.0
            bn.weight[idx] *= 0.0
            bn.weight[idx] += 1.0
            bn.running_mean[idx] *= 0.0
            bn.running_var[idx] *= 0.0
            bn.running_var[idx] += 1.0

    def gen_and_test(self, features):
        self.gen_new_features(self.test_features(features))


def test_cbp_reference_mode_replaces_the_same_units_with_the_same_weights_as_res_gnt(one_thread):
    """2,000 SGD steps of a small ResNet-18 (width 2, 8x8 inputs): memplast's CBP (``reference``)
    and the re-stated ResGnT replace the same units at every step and end with identical weights."""
    steps, rate, maturity, decay = 2000, 0.01, 40, 0.99
    torch.manual_seed(0)
    nets = [ResNet18(num_classes=4, in_channels=3, width=2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for n in nets]
    cfg = {"replacement_rate": rate, "decay_rate": decay, "maturity_threshold": maturity, "mode": "reference"}
    ours = A.CBP(nets[0], cfg, seed=11)
    ref = RestatedResGnT(nets[1], decay, rate, maturity, torch.Generator().manual_seed(11))
    assert ref.num_hidden_layers == len(ours.layers) == 17
    data = torch.Generator().manual_seed(1)
    replaced = 0
    for _ in range(steps):
        x = torch.randn(6, 3, 8, 8, generator=data)
        y = torch.randint(0, 4, (6,), generator=data)
        outs = []
        for net, opt in zip(nets, opts):
            out = net(x, return_acts=True)
            opt.zero_grad()
            F.cross_entropy(out.logits, y).backward()
            opt.step()
            outs.append(out)
        replaced += ours(outs[0].acts)
        ref.gen_and_test([a.detach() for a in outs[1].acts[:-1]] + [outs[1].features.detach()])
        for a, b in zip(ours.age, ref.ages):
            assert torch.equal(a.float(), b)  # same units replaced (age reset to 0) at every step
    assert replaced > 1000  # about 1.2 units per step once mature, over 17 layers
    for (k, v), w in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(v, w), k


# --------------------------------------------------------------------------- UPGD
class _RestatedUPGD(torch.optim.Optimizer):
    """Shared by the two re-statements: the first pass (traces, moments, the global max of the raw
    trace) and the noise convention."""

    def __init__(self, params, generator, **defaults):
        super().__init__(params, defaults)
        self.generator = generator

    def _first_pass(self, adam):
        global_max_util = torch.tensor(-torch.inf)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["avg_utility"] = torch.zeros_like(p.data)
                    if adam:
                        state["first_moment"] = torch.zeros_like(p.data)
                        state["sec_moment"] = torch.zeros_like(p.data)
                state["step"] += 1
                avg_utility = state["avg_utility"]
                avg_utility.mul_(group["beta_utility"]).add_(-p.grad.data * p.data, alpha=1 - group["beta_utility"])
                if adam:
                    state["first_moment"].mul_(group["beta1"]).add_(p.grad.data, alpha=1 - group["beta1"])
                    state["sec_moment"].mul_(group["beta2"]).add_(p.grad.data**2, alpha=1 - group["beta2"])
                if avg_utility.max() > global_max_util:
                    global_max_util = avg_utility.max()
        ps = [p for g in self.param_groups for p in g["params"]]
        noise = torch.randn(sum(p.numel() for p in ps), generator=self.generator).split([p.numel() for p in ps])
        return global_max_util, {id(p): n.view_as(p).to(p.dtype) for p, n in zip(ps, noise)}


class RestatedFirstOrderGlobalUPGD(_RestatedUPGD):
    @torch.no_grad()
    def step(self):
        global_max_util, noise = self._first_pass(adam=False)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                bias_correction = 1 - group["beta_utility"] ** state["step"]
                xi = noise[id(p)] * group["sigma"]
                scaled_utility = torch.sigmoid_((state["avg_utility"] / bias_correction) / global_max_util)
                p.data.mul_(1 - group["lr"] * group["weight_decay"]).add_(
                    (p.grad.data + xi) * (1 - scaled_utility), alpha=-group["lr"]
                )


class RestatedAdaptiveUPGD(_RestatedUPGD):
    @torch.no_grad()
    def step(self):
        global_max_util, noise = self._first_pass(adam=True)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                bc_u = 1 - group["beta_utility"] ** state["step"]
                exp_avg = state["first_moment"] / (1 - group["beta1"] ** state["step"])
                exp_avg_sq = state["sec_moment"] / (1 - group["beta2"] ** state["step"])
                xi = noise[id(p)] * group["sigma"]
                scaled_utility = torch.sigmoid_((state["avg_utility"] / bc_u) / global_max_util)
                p.data.mul_(1 - group["lr"] * group["weight_decay"]).add_(
                    (exp_avg * (1 - scaled_utility)) / (exp_avg_sq.sqrt() + group["eps"]) + xi * (1 - scaled_utility),
                    alpha=-2.0 * group["lr"],
                )


@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_upgd_matches_the_reference_optimizers_over_training(variant, one_thread):
    """300 steps of a small CNN (float64, so rounding is no excuse): memplast's UPGD (full gating)
    and the re-stated FirstOrderGlobalUPGD / AdaptiveUPGD give the same weights."""
    steps, lr, wd, beta_u, sigma = 300, 0.01, 1e-3, 0.9, 1e-3
    torch.manual_seed(0)
    nets = [SmallCNN(num_classes=3, in_channels=1, width=4).double() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = {k: v.clone() for k, v in nets[0].state_dict().items()}
    cfg = {"gating": "full", "beta_utility": beta_u, "sigma": sigma, "variant": variant, "beta1": 0.9,
           "beta2": 0.999, "eps": 1e-5, "non_gated_scale": 0.5}  # fmt: skip
    ours = A.make_upgd(nets[0], cfg, lr, wd, seed=5)
    restated = RestatedAdaptiveUPGD if variant == "adam" else RestatedFirstOrderGlobalUPGD
    extra = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-5} if variant == "adam" else {}
    ref = restated(nets[1].parameters(), torch.Generator().manual_seed(5), lr=lr, weight_decay=wd,
                   beta_utility=beta_u, sigma=sigma, **extra)  # fmt: skip
    data = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(8, 1, 8, 8, generator=data, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=data)
        for net, opt in zip(nets, (ours, ref)):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    for (k, v), w in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-10, atol=1e-12, msg=k)
    moved = max((v - start[k]).abs().max().item() for k, v in nets[0].state_dict().items())
    assert moved > 1e-3  # the weights did train


def test_upgd_cbp_resets_utility_and_moments_of_replaced_weights():
    """After every step, the UPGD state (utility, Adam moments) of each weight CBP re-initialised
    (incoming row, bias, BatchNorm affine, outgoing column) is zero and every other entry is as
    the optimizer step left it."""
    model = SmallCNN(num_classes=3, in_channels=1, width=2)
    protocol = {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9,
                "cbp": {"replacement_rate": 0.5, "decay_rate": 0.9, "maturity_threshold": 1, "mode": "reference"},
                "upgd": {"lr": {"sgd": None, "adam": 0.01}, "weight_decay": None, "variant": "adam", "gating": "full",
                         "beta_utility": 0.9, "sigma": 0.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-5,
                         "non_gated_scale": 0.5}}  # fmt: skip
    algo = A.make_algorithm("upgd_cbp", protocol, order_seed=0)
    opt = algo.make_optimizer(model)
    algo.attach(model, torch.Generator())
    keys, total = ("utility", "exp_avg", "exp_avg_sq"), 0
    for s in range(4):
        out = model(torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(s)), return_acts=True)
        opt.zero_grad()
        out.logits.pow(2).mean().backward()
        opt.step()
        expected = {p: {k: opt.state[p][k].clone() for k in keys} for p in model.parameters()}
        total += algo.after_step(out.acts)
        for i, L in enumerate(algo.cbp.layers):
            new = torch.nonzero(algo.cbp.age[i] == 0).flatten()
            for p, index in ((L.layer.weight, (new,)), (L.layer.bias, (new,)), (L.next.weight, (slice(None), new))):
                for k in keys:
                    expected[p][k][index] = 0
            if L.bn is not None:
                for p in (L.bn.weight, L.bn.bias):
                    for k in keys:
                        expected[p][k][new] = 0
        for p in model.parameters():
            for k in keys:
                assert torch.equal(opt.state[p][k], expected[p][k])
    assert total >= 10


def test_adam_upgd_without_its_own_learning_rate_is_a_config_error():
    from memplast.grid import ConfigError, upgd_lr

    protocol = {"lr": 0.1, "upgd": {"lr": {"sgd": None, "adam": None}, "variant": "adam"}}
    with pytest.raises(ConfigError, match="upgd.lr.adam is null"):
        upgd_lr(protocol)
    assert upgd_lr({**protocol, "upgd": {**protocol["upgd"], "variant": "sgd"}}) == 0.1
    assert upgd_lr({**protocol, "upgd": {"lr": {"sgd": None, "adam": 1e-3}, "variant": "adam"}}) == 1e-3
