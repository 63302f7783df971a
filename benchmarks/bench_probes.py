"""Time to probe one checkpoint, against one plain forward+backward over the same samples.

ResNet-18 (memplast.models.ResNet18) at width 16 and 64 on a CIFAR-shaped batch, eval-mode BN.
The first three rows are timed as the best of ``--repeats`` interleaved rounds (so load from
other processes hurts them alike), the others as the best of 2:

- ``fwd+bwd``: one forward and backward of the summed loss (the reference, ratio 1);
- ``probe``: every per-sample quantity of an ordinary probed checkpoint (loss, margin, correct,
  confidence under both masks, grad_norm, input_grad_norm, dormant, features);
- ``probe+align``: the same plus align_dot / align_cos from one JVP (the end-of-task checkpoint
  without curvature);
- ``probe+align+curv``: plus pred_forget's G^T H_i G from the nested JVP (not part of the goal);
- ``vmap(grad)``: grad_norm alone from torch.func per-sample gradients (the alternative design);
- ``loop``: grad_norm and input_grad_norm from a per-sample autograd loop.

Goal: ``probe+align`` within 2.5x of ``fwd+bwd``. Usage: python benchmarks/bench_probes.py [--quick]

``--pred-forget`` instead validates pred_forget (design §4) on trained demo-scale checkpoints:
the demo protocol (config/demo.yaml, digits, small CNN, class order 0) is trained task by task;
at each task end, for every old-class training sample, pred_forget_i = -eta g_i.G + eta^2/2 G^T H_i G
is compared with the realised change loss_i(theta - eta G) - loss_i(theta) of one plain SGD step
along G (the mean gradient of the next task's loss over its new-class samples), eval-mode BN, for
eta = the next task's lr and lr / 10. Reports Spearman rho and the fraction of equal signs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from memplast import probes
from memplast.masks import class_mask, per_sample_loss
from memplast.models import ResNet18

C = 100


def best_times(fns: dict, repeats: int) -> dict:
    """Best wall time of each function over ``repeats`` interleaved rounds (after one warm-up)."""
    for f in fns.values():
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def run(width: int, n: int, repeats: int, slow_rows: bool) -> dict:
    torch.manual_seed(0)
    model = ResNet18(C, 3, width).eval()
    x = torch.randn(n, 3, 32, 32)
    y = torch.randint(0, 10, (n,))
    old, native = class_mask(range(5), C), class_mask(range(10), C)
    masks = torch.where(old[y][:, None], old, native)
    G = {k: 1e-3 * torch.randn_like(p) for k, p in model.named_parameters()}
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        per_sample_loss(model(x), y, native).sum().backward()

    def probe(**kw):
        return lambda: probes.probe_checkpoint(model, x, y, masks, native, batch_size=n, **kw)

    def vmap_grad():
        def loss1(p, xi, yi):
            return per_sample_loss(functional_call(model, {**p, **buffers}, (xi[None],)), yi[None], native[None])[0]

        g = vmap(grad(loss1), in_dims=(None, 0, 0), chunk_size=8)(params, x, y)
        return torch.sqrt(sum(v.flatten(1).square().sum(1) for v in g.values()))

    def loop():
        out = []
        for i in range(n):
            xi = x[i : i + 1].clone().requires_grad_()
            gs = torch.autograd.grad(
                per_sample_loss(model(xi), y[i : i + 1], masks[i : i + 1])[0], [xi, *model.parameters()]
            )
            out.append((gs[0].norm(), torch.sqrt(sum(g.square().sum() for g in gs[1:]))))
        return out

    times = best_times({"fwd+bwd": fwd_bwd, "probe": probe(), "probe+align": probe(direction=G)}, repeats)
    if slow_rows:  # context only: best of 2 after the warm-up
        times |= best_times({"probe+align+curv": probe(direction=G, eta=0.1), "vmap(grad)": vmap_grad, "loop": loop}, 2)
    model.zero_grad(set_to_none=True)
    return times


def pred_forget_validation(n_tasks: int = 4) -> list[dict]:
    """pred_forget vs the realised one-step loss change at the end of each of ``n_tasks`` demo tasks."""
    import tempfile
    from pathlib import Path

    from scipy import stats

    from memplast import config, data, train
    from memplast.augment import normalize
    from memplast.checkpoints import load_checkpoint

    root = Path(__file__).resolve().parents[1]
    cfg = config.load(root / "config.yaml", root / "config" / "demo.yaml")
    proto, cpt = cfg["protocol"], cfg["protocol"]["classes_per_task"]
    prepared = data.prepare(cfg["dataset"])
    order = data.class_order(0, prepared.n_classes)
    x_all = normalize(torch.as_tensor(prepared.images), prepared.mean, prepared.std)
    rows, prev = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for t in range(n_tasks):
            spec = train.RunSpec(
                "bench/pred_forget", 0, order, t, prepared.sample_id[prepared.split == "train"], "random", 0.0, "base"
            )
            end = str(tmp / f"end{t}.pt")
            E = proto["epochs_per_task"]
            paths = train.TaskPaths(
                end=end,
                checkpoints={(t + 1) * E: str(tmp / f"ckpt{t}.pt")},
                metrics=str(tmp / f"m{t}.parquet"),
                order_log=str(tmp / f"o{t}.parquet"),
                resume=str(tmp / f"r{t}.pt"),
                prev_state=prev,
            )
            train.run_task(spec, prepared, cfg, paths, {})
            prev = end
            model, _ = load_checkpoint(tmp / f"ckpt{t}.pt")
            old, nxt = order[: (t + 1) * cpt], order[: (t + 2) * cpt]
            train_rows = prepared.split == "train"
            o = np.flatnonzero(train_rows & np.isin(prepared.labels, old))
            n = np.flatnonzero(train_rows & np.isin(prepared.labels, nxt) & ~np.isin(prepared.labels, old))
            old_mask = class_mask(old, prepared.n_classes)
            next_mask = class_mask(nxt, prepared.n_classes)
            x, y = x_all[o], torch.as_tensor(prepared.labels[o])
            G = probes.mean_gradient(model, x_all[n], torch.as_tensor(prepared.labels[n]), next_mask)
            params = {k: p.detach() for k, p in model.named_parameters()}
            buffers = dict(model.named_buffers())
            with torch.no_grad():
                before = per_sample_loss(
                    functional_call(model, {**params, **buffers}, (x,)), y, probes.row_masks(old_mask, len(y))
                )
            for eta in (proto["lr"], proto["lr"] / 10):
                pred = probes.probe_checkpoint(model, x, y, old_mask, old_mask, direction=G, eta=eta)["pred_forget"]
                stepped = {k: v - eta * G[k] for k, v in params.items()}
                with torch.no_grad():
                    after = per_sample_loss(
                        functional_call(model, {**stepped, **buffers}, (x,)), y, probes.row_masks(old_mask, len(y))
                    )
                real = (after - before).double()
                rho = stats.spearmanr(pred.numpy(), real.numpy()).statistic
                rows.append(
                    {
                        "task": t,
                        "eta": eta,
                        "n": len(y),
                        "spearman": float(rho),
                        "sign_agreement": float((torch.sign(pred) == torch.sign(real)).double().mean()),
                        "mean_pred": float(pred.mean()),
                        "mean_real": float(real.mean()),
                    }
                )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, width 16 only, no slow rows")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--pred-forget", action="store_true", help="validate pred_forget on trained demo checkpoints")
    args = ap.parse_args()
    if args.pred_forget:
        rows = pred_forget_validation()
        print(f"{'task':>4} {'eta':>7} {'n':>5} {'spearman':>9} {'sign agr.':>9} {'mean pred':>10} {'mean real':>10}")
        for r in rows:
            print(
                f"{r['task']:>4} {r['eta']:7.4f} {r['n']:>5} {r['spearman']:9.3f} {r['sign_agreement']:9.3f} "
                f"{r['mean_pred']:10.2e} {r['mean_real']:10.2e}"
            )
        by_eta = {}
        for r in rows:
            by_eta.setdefault(r["eta"], []).append(r)
        print(
            "SUMMARY pred_forget vs realised one-step change (median over tasks): "
            + "; ".join(
                f"eta {eta:g}: Spearman {np.median([r['spearman'] for r in rs]):.2f}, "
                f"sign agreement {np.median([r['sign_agreement'] for r in rs]):.2f}"
                for eta, rs in by_eta.items()
            )
        )
        return
    configs = [(16, 64)] if args.quick else [(16, 64), (64, 32)]
    repeats = args.repeats or 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; core rows: best of {repeats}")
    print(f"{'width':>5} {'N':>4} {'row':<18} {'seconds':>8} {'x fwd+bwd':>10}")
    summary = []
    for width, n in configs:
        t = run(width, n, repeats, slow_rows=not args.quick)
        for k, v in t.items():
            print(f"{width:>5} {n:>4} {k:<18} {v:8.3f} {v / t['fwd+bwd']:10.2f}")
        summary.append(
            f"w{width}: probe {t['probe'] / t['fwd+bwd']:.2f}x, probe+align {t['probe+align'] / t['fwd+bwd']:.2f}x"
            + (f", loop {t['loop'] / t['fwd+bwd']:.1f}x" if "loop" in t else "")
        )
    print("SUMMARY (vs one fwd+bwd; goal probe+align <= 2.5x): " + "; ".join(summary))


if __name__ == "__main__":
    main()
