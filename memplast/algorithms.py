"""The ``algorithm`` run factor: what each algorithm adds to plain SGD, behind one interface.

:class:`Algorithm` (``base``) is the interface; each algorithm is a subclass registered in
:data:`ALGORITHMS` (``retrained``, ``head_reset``, ``shrink_perturb``, ``cbp``, ``upgd``,
``upgd_cbp``), so the training loop never names one. The mechanisms behind them:
shrink-and-perturb, continual backprop (CBP, Dohare et al. 2024) and utility-based perturbed
gradient descent (UPGD, Elsayed & Mahmood 2024, first order).

Every random draw (replacement weights, perturbations) comes from a seeded CPU
``torch.Generator`` and is moved to the device afterwards, so results and the generator
state do not depend on the device. Each algorithm's whole state (utilities, ages, moments,
generator) round-trips through ``state_dict`` / ``load_state_dict`` for a bitwise resume.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from memplast.device import stable_seed
from memplast.grid import upgd_lr, upgd_weight_decay
from memplast.models import HiddenLayer, head, hidden_layers, reinit

CBP_MODES = ("reference", "eq1")
UPGD_GATINGS = ("full", "hidden_only", "output_only")


# --------------------------------------------------------------------------- shrink and perturb
def shrink_perturb_step(model, sp: dict, generator: torch.Generator):
    """After every SGD step: theta <- shrink * theta + N(0, noise_std^2), for every parameter.

    ``generator`` is a CPU generator (its state is saved, so it loads on any device); it draws
    one seed per step, and the noise is drawn on the parameters' device from a generator seeded
    with it, so no noise crosses the host-device link and the step never waits for the device.
    """
    from memplast.device import host_int

    device = next(model.parameters()).device
    on_device = torch.Generator(device=device)

    @torch.no_grad()
    def step():
        on_device.manual_seed(host_int(torch.randint(0, 2**62, (1,), generator=generator)))
        for p in model.parameters():
            p.mul_(sp["shrink"]).add_(torch.randn(p.shape, generator=on_device, device=p.device) * sp["noise_std"])

    return step


# --------------------------------------------------------------------------- continual backprop
def _per_unit_mean_abs(t: torch.Tensor) -> torch.Tensor:
    """Mean |t| over every dimension but dim 1 (units: channels of N x C x H x W, or columns of N x D)."""
    return t.abs().mean(dim=[d for d in range(t.dim()) if d != 1])


def outgoing_magnitude(next_layer: nn.Module) -> torch.Tensor:
    """Mean |outgoing weight| of every unit: mean over the next layer's weight except dim 1."""
    return _per_unit_mean_abs(next_layer.weight.detach())


def feature_magnitude(act: torch.Tensor) -> torch.Tensor:
    """Mean |activation| of every unit over the batch (and positions for conv maps)."""
    return _per_unit_mean_abs(act.detach())


class CBP:
    """Continual backprop (generate-and-test) over :func:`models.hidden_layers`.

    ``reference`` (the default): ``ResGnT`` of the reference code (``lop/algos/res_gnt.py``, the
    file behind the paper's ResNet-18 curves) exactly as it runs. After every optimizer step,
    for each hidden layer with units j and ReLU outputs h_j of the step's batch:
    age_j += 1; F_j += (1 - decay) mean|h_j| (a lifetime sum over batch and positions: never
    decayed, never reset when the unit is replaced); once any unit is older than
    ``maturity_threshold``, acc += ``replacement_rate`` x (units in the layer); k = int(acc),
    acc -= k; if k > 0 the utility u_j = mean_k |w_out[k, j]| x F_j is computed (only on such
    steps) and the k units with the lowest utility among those older than the maturity are
    replaced.

    ``eq1``: Eq. 1 of Dohare et al. (2024), an EMA of the contribution updated every step,
    u_j <- decay u_j + (1 - decay) mean_k |w_out[k, j]| x mean|h_j| (this batch), with the
    count of ``cbp_conv.py``: acc += ``replacement_rate`` x (units older than the maturity).

    Both: ties in the utility go to the lower index; a replaced unit gets fresh incoming weights
    (Kaiming normal, fan-in, ReLU gain sqrt(2), for conv and linear hidden layers alike), bias 0,
    zero outgoing weights, BatchNorm gamma 1 / beta 0 / running mean 0 / running var 1, age 0
    (``eq1``: utility 0). Optimizer state (momentum) is left as it is, as in the reference; an
    optimizer that keeps per-weight state it should forget (UPGD) sets :attr:`on_replace`.
    """

    def __init__(self, model: nn.Module, cfg: dict, seed: int):
        if cfg["mode"] not in CBP_MODES:
            raise ValueError(f"cbp.mode {cfg['mode']!r}: choose one of {CBP_MODES}")
        self.layers: list[HiddenLayer] = hidden_layers(model)
        self.rate, self.decay = cfg["replacement_rate"], cfg["decay_rate"]
        self.maturity, self.mode = cfg["maturity_threshold"], cfg["mode"]
        self.generator = torch.Generator().manual_seed(seed)
        dev = next(model.parameters()).device
        sizes = [L.layer.weight.shape[0] for L in self.layers]
        self.util = [torch.zeros(n, device=dev) for n in sizes]
        self.feat = [torch.zeros(n, device=dev) for n in sizes]  # reference: the lifetime sum F
        self.age = [torch.zeros(n, dtype=torch.long) for n in sizes]  # CPU: no device sync per step
        self.accumulated = [0.0 for _ in sizes]
        self.replaced = 0  # units replaced since the last pop_replaced()
        self.on_replace = None  # called with [(parameter, index), ...] of every re-initialised entry

    @torch.no_grad()
    def __call__(self, acts) -> int:
        """Update utilities from this step's ReLU outputs ``acts`` and replace units; returns the count.

        As in the reference, every layer's units are chosen first, then all are replaced."""
        chosen = [self._select(i, L, acts[L.act]) for i, L in enumerate(self.layers)]
        n_replaced = 0
        for i, units in enumerate(chosen):
            if units is not None:
                self.replace(i, units)
                n_replaced += len(units)
        self.replaced += n_replaced
        return n_replaced

    def _select(self, i: int, L: HiddenLayer, act: torch.Tensor):
        """Layer i's step: ages, feature statistics, count; the units to replace now (or None)."""
        self.age[i] += 1
        if self.mode == "reference":
            self.feat[i].add_(feature_magnitude(act), alpha=1 - self.decay)
        else:
            self.util[i].mul_(self.decay).add_(
                outgoing_magnitude(L.next) * feature_magnitude(act), alpha=1 - self.decay
            )
        eligible = torch.nonzero(self.age[i] > self.maturity).flatten()
        if len(eligible) == 0:
            return None
        self.accumulated[i] += self.rate * (len(self.age[i]) if self.mode == "reference" else len(eligible))
        k = int(self.accumulated[i])
        self.accumulated[i] -= k
        if k == 0:
            return None
        if self.mode == "reference":
            self.util[i] = outgoing_magnitude(L.next) * self.feat[i]
        score = self.util[i].detach().cpu().double()[eligible]
        return eligible[torch.argsort(score, stable=True)[:k]]

    @torch.no_grad()
    def replace(self, i: int, units: torch.Tensor) -> None:
        """Re-initialise ``units`` (CPU long tensor) of hidden layer i as described in the class docstring."""
        L = self.layers[i]
        w = L.layer.weight
        std = math.sqrt(2.0) / math.sqrt(w[0].numel())  # Kaiming normal, fan-in, ReLU gain
        fresh = torch.empty((len(units), *w.shape[1:]), dtype=torch.float32).normal_(0.0, std, generator=self.generator)
        idx = units.to(w.device)
        w[idx] = fresh.to(w.device, w.dtype)
        touched = [(w, (idx,)), (L.next.weight, (slice(None), idx))]
        if L.layer.bias is not None:
            L.layer.bias[idx] = 0
            touched.append((L.layer.bias, (idx,)))
        if L.bn is not None:
            L.bn.weight[idx] = 1
            L.bn.bias[idx] = 0
            L.bn.running_mean[idx] = 0
            L.bn.running_var[idx] = 1
            touched += [(L.bn.weight, (idx,)), (L.bn.bias, (idx,))]
        L.next.weight[:, idx] = 0
        self.util[i][idx] = 0
        self.age[i][units] = 0
        if self.on_replace is not None:
            self.on_replace(touched)

    def pop_replaced(self) -> int:
        n, self.replaced = self.replaced, 0
        return n

    def state_dict(self) -> dict:
        return {
            "util": [u.cpu() for u in self.util],
            "feat": [f.cpu() for f in self.feat],
            "age": [a.clone() for a in self.age],
            "accumulated": list(self.accumulated),
            "generator": self.generator.get_state(),
            "replaced": self.replaced,
        }

    def load_state_dict(self, state: dict) -> None:
        dev = self.util[0].device
        self.util = [u.to(dev) for u in state["util"]]
        self.feat = [f.to(dev) for f in state["feat"]]
        self.age = [a.cpu().clone() for a in state["age"]]
        self.accumulated = list(state["accumulated"])
        self.generator.set_state(state["generator"].cpu())
        self.replaced = state["replaced"]


# --------------------------------------------------------------------------- UPGD
class UPGD(torch.optim.Optimizer):
    """First-order UPGD (Elsayed & Mahmood 2024) with layer-selective gating.

    ``sgd`` is the reference's ``FirstOrderGlobalUPGD`` (``core/optim/weight_upgd/first_order.py``),
    ``adam`` its ``AdaptiveUPGD`` (``core/run/rl/adaupgd.py``). Per parameter element, with
    gradient g at step t: utility trace U <- beta_u U + (1 - beta_u)(-g theta); gate =
    1 - sigmoid((U / (1 - beta_u^t)) / max U), the max over the *raw* trace of every gated
    parameter (as the reference: the bias correction is in the numerator only), for gated
    parameters, ``non_gated_scale`` for the others (``full`` gating = the reference). With
    xi ~ N(0, sigma^2):
    ``sgd``:  theta <- theta (1 - lr wd) - lr (g + xi) gate;
    ``adam``: m, v Adam moments (beta1, beta2), bias-corrected,
    theta <- theta (1 - lr wd) - 2 lr (m̂ / (sqrt(v̂) + eps) + xi) gate (AdaptiveUPGD's step of
    2 lr, its decay of lr wd). A max of exactly 0 (all traces zero) divides by 1 instead.
    Parameters without a gradient are skipped. Noise is drawn on the CPU from the optimizer's own
    generator (in its state_dict): one N(0, 1) vector over all active parameters in group order.
    """

    def __init__(
        self,
        gated,
        non_gated,
        lr: float,
        weight_decay: float,
        beta_utility: float = 0.999,
        sigma: float = 1e-3,
        variant: str = "sgd",
        betas=(0.9, 0.999),
        eps: float = 1e-5,
        non_gated_scale: float = 0.5,
        seed: int = 0,
    ):
        if variant not in ("sgd", "adam"):
            raise ValueError(f"upgd.variant {variant!r}: choose sgd or adam")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            beta_utility=beta_utility,
            sigma=sigma,
            variant=variant,
            betas=tuple(betas),
            eps=eps,
            non_gated_scale=non_gated_scale,
        )
        groups = [{"params": list(ps), "gated": gated_flag} for ps, gated_flag in ((gated, True), (non_gated, False))]
        super().__init__([g for g in groups if g["params"]], defaults)
        self.generator = torch.Generator().manual_seed(seed)

    def _active(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    yield group, p

    @torch.no_grad()
    def step(self, closure=None):
        active = list(self._active())
        u_maxes = []
        for group, p in active:
            st = self.state[p]
            if not st:
                st["step"] = 0
                if group["gated"]:
                    st["utility"] = torch.zeros_like(p)
                if group["variant"] == "adam":
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            st["step"] += 1
            if group["gated"]:
                bu = group["beta_utility"]
                st["utility"].mul_(bu).addcmul_(p.grad, p, value=-(1 - bu))
                u_maxes.append(st["utility"].max())
        u_max = torch.stack(u_maxes).max() if u_maxes else None
        if u_max is not None:
            u_max = torch.where(u_max == 0, torch.ones_like(u_max), u_max)
        numel = [p.numel() for _, p in active]
        noise = torch.randn(sum(numel), generator=self.generator).split(numel)
        for (group, p), xi in zip(active, noise):
            st, lr = self.state[p], group["lr"]
            xi = xi.view_as(p).to(p.device, p.dtype) * group["sigma"]
            if group["variant"] == "adam":
                b1, b2 = group["betas"]
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m_hat = st["exp_avg"] / (1 - b1 ** st["step"])
                v_hat = st["exp_avg_sq"] / (1 - b2 ** st["step"])
                direction = m_hat / (v_hat.sqrt() + group["eps"])
            else:
                direction = p.grad
            if group["gated"]:
                u_hat = st["utility"] / (1 - group["beta_utility"] ** st["step"])
                update = (direction + xi) * (1 - torch.sigmoid(u_hat / u_max))
            else:
                update = (direction + xi) * group["non_gated_scale"]
            step = 2 * lr if group["variant"] == "adam" else lr
            p.mul_(1 - lr * group["weight_decay"]).sub_(update, alpha=step)
        return None

    @torch.no_grad()
    def reset_entries(self, touched) -> None:
        """Forget the utility trace and Adam moments of re-initialised entries:
        ``touched`` = [(parameter, index), ...] (:attr:`CBP.on_replace`)."""
        for p, index in touched:
            for key in ("utility", "exp_avg", "exp_avg_sq"):
                if key in self.state.get(p, {}):
                    self.state[p][key][index] = 0

    def state_dict(self):
        sd = super().state_dict()
        sd["generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        gen = state_dict.pop("generator", None)
        super().load_state_dict(state_dict)
        if gen is not None:
            self.generator.set_state(gen.cpu())


def upgd_groups(model: nn.Module, gating: str):
    """(gated, non-gated) parameter lists: ``full`` gates all, ``hidden_only`` all but the head,
    ``output_only`` the head only (head = the classifier layer)."""
    if gating not in UPGD_GATINGS:
        raise ValueError(f"upgd.gating {gating!r}: choose one of {UPGD_GATINGS}")
    head_ids = {id(p) for p in head(model).parameters()}
    hidden = [p for p in model.parameters() if id(p) not in head_ids]
    out = list(head(model).parameters())
    return {"full": (hidden + out, []), "hidden_only": (hidden, out), "output_only": (out, hidden)}[gating]


def make_upgd(model: nn.Module, cfg: dict, lr: float, weight_decay: float, seed: int) -> UPGD:
    """The UPGD optimizer of ``model`` from the ``protocol.upgd`` config section."""
    gated, non_gated = upgd_groups(model, cfg["gating"])
    return UPGD(
        gated,
        non_gated,
        lr=lr,
        weight_decay=weight_decay,
        beta_utility=cfg["beta_utility"],
        sigma=cfg["sigma"],
        variant=cfg["variant"],
        betas=(cfg["beta1"], cfg["beta2"]),
        eps=cfg["eps"],
        non_gated_scale=cfg["non_gated_scale"],
        seed=seed,
    )


# --------------------------------------------------------------------------- the interface
class Algorithm:
    """``base``: SGD with momentum and L2 weight decay (``protocol``), nothing else.

    The hooks the training loop calls, in this order:
    ``make_optimizer(model)`` once per task job (before any state is loaded), ``attach(model,
    noise_generator)`` once the previous task's state is loaded, ``start_task(state, task)`` at
    the start of every task (re-initialisations), ``after_step(acts)`` after every optimizer step
    (with the batch's ReLU outputs when ``wants_acts``), ``pop_replaced()`` once per epoch (units
    re-initialised since the last call); ``state_dict``/``load_state_dict`` round-trip whatever is
    not in the model, the optimizer or the run's generators (saved under the key ``cbp`` of the
    task states, as before this interface).
    """

    wants_acts = False

    def __init__(self, protocol: dict, order_seed: int):
        self.protocol, self.order_seed = protocol, order_seed

    @property
    def lr(self) -> float:
        """The learning rate every task restarts from."""
        return self.protocol["lr"]

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        p = self.protocol
        return torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])

    def attach(self, model: nn.Module, noise_generator: torch.Generator) -> None:
        pass

    def start_task(self, state, task: int) -> None:
        pass

    after_step = None  # a callable, or None when the algorithm does nothing after a step

    def pop_replaced(self) -> int:
        return 0

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


class Retrained(Algorithm):
    """``retrained``: the network re-initialised at the start of every task after the first (the
    reference for relative accuracy); SGD momentum kept unless ``keep_momentum_on_reset`` is false."""

    def start_task(self, state, task: int) -> None:
        if task == 0:
            return
        reinit(state.model, stable_seed("init", self.order_seed, task))
        if not self.protocol["keep_momentum_on_reset"]:
            state.optimizer = self.make_optimizer(state.model)


class HeadReset(Algorithm):
    """``head_reset``: the linear head re-initialised at the start of every task after the first."""

    def start_task(self, state, task: int) -> None:
        if task == 0:
            return
        reinit(head(state.model), stable_seed("head", self.order_seed, task))
        if not self.protocol["keep_momentum_on_reset"]:
            for p in head(state.model).parameters():
                state.optimizer.state.pop(p, None)


class ShrinkPerturb(Algorithm):
    """``shrink_perturb``: theta <- shrink * theta + noise after every step (:func:`shrink_perturb_step`)."""

    def attach(self, model: nn.Module, noise_generator: torch.Generator) -> None:
        self.after_step = shrink_perturb_step(model, self.protocol["shrink_perturb"], noise_generator)


class ContinualBackprop(Algorithm):
    """``cbp``: SGD plus :class:`CBP` after every step."""

    wants_acts = True

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        optimizer = super().make_optimizer(model)
        self.cbp = CBP(model, self.protocol["cbp"], stable_seed("cbp", self.order_seed))
        return optimizer

    def attach(self, model: nn.Module, noise_generator: torch.Generator) -> None:
        self.after_step = self.cbp

    def pop_replaced(self) -> int:
        return self.cbp.pop_replaced()

    def state_dict(self):
        return self.cbp.state_dict()

    def load_state_dict(self, state) -> None:
        self.cbp.load_state_dict(state)


class Upgd(Algorithm):
    """``upgd``: the :class:`UPGD` optimizer (``protocol.upgd``) instead of SGD."""

    @property
    def lr(self) -> float:
        return upgd_lr(self.protocol)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        p = self.protocol
        seed = stable_seed("upgd", self.order_seed)
        return make_upgd(model, p["upgd"], self.lr, upgd_weight_decay(p), seed)


class UpgdCbp(ContinualBackprop, Upgd):
    """``upgd_cbp``: the UPGD optimizer plus continual backprop; the UPGD utility and Adam moments
    of every weight CBP re-initialises are reset with it (:meth:`UPGD.reset_entries`)."""

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        optimizer = super().make_optimizer(model)
        self.cbp.on_replace = optimizer.reset_entries
        return optimizer


ALGORITHMS = {
    "base": Algorithm,
    "retrained": Retrained,
    "head_reset": HeadReset,
    "shrink_perturb": ShrinkPerturb,
    "cbp": ContinualBackprop,
    "upgd": Upgd,
    "upgd_cbp": UpgdCbp,
}


def make_algorithm(name: str, protocol: dict, order_seed: int) -> Algorithm:
    """The algorithm ``name`` of the run factor, reading its hyper-parameters from ``protocol``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](protocol, order_seed)
