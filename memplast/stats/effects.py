"""Effect sizes beyond one coefficient: memo-decile medians, extreme-tail enrichment, mediation,
and the descriptive cross-sample table (per run; rows are samples, so resampling rows is
resampling samples)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from memplast.stats.common import KINDS, RUN_KEYS, finite, key_dict, require, require_finite, rows_of_kinds

DECILE_COLUMNS = ["term", "decile", "n", "memo_min", "memo_max", "median", "ci_low", "ci_high", "p"]
TAIL_COLUMNS = [
    "boundary",
    "n",
    "k",
    "memo_threshold",
    "n_high",
    "n_tail_high",
    "p_high_tail",
    "p_high_all",
    "enrichment",
    "odds_ratio",
    "p",
    "jaccard_prev",
]
MEDIATION_EFFECTS = ("acme", "ade", "total", "prop_mediated")
MEDIATION_COLUMNS = ["n"] + [f"{e}{s}" for e in MEDIATION_EFFECTS for s in ("", "_ci_low", "_ci_high", "_p")]
CROSS_SAMPLE_COLUMNS = RUN_KEYS + [
    "kind",
    "boundary",
    "n_new",
    "new_memo_mean",
    "n_old",
    "old_d_loss_mean",
    "spearman_r",
    "n_boundaries",
]


def bootstrap_medians(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` draws of the median of a resample (n draws with replacement) of ``values``, drawn
    from its exact distribution without drawing the resample.

    With x_(1) <= ... <= x_(n) the sorted values, a draw with replacement is x_(ceil(n U)), U
    uniform, so the k-th smallest of the resample is x_(ceil(n V_(k))) with V_(k) the k-th order
    statistic of n uniforms: V_(k) ~ Beta(k, n - k + 1), and given it the next one is
    V_(k+1) = V_(k) + (1 - V_(k)) (1 - U^(1 / (n - k))) (the least of the n - k uniforms above it).
    The median is the middle order statistic (n odd, k = (n + 1) / 2) or the mean of the k-th and
    (k + 1)-th (n even, k = n / 2), as ``np.median``. Two random numbers per draw instead of n:
    the same distribution as the median of an explicit resample (tests/test_stats.py)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    k = (n + 1) // 2
    v = rng.beta(k, n - k + 1, size=n_boot)
    lo = x[np.clip(np.ceil(n * v).astype(np.int64) - 1, 0, n - 1)]
    if n % 2:
        return lo
    v_next = v + (1 - v) * (1 - rng.random(n_boot) ** (1 / (n - k)))
    return (lo + x[np.clip(np.ceil(n * v_next).astype(np.int64) - 1, 0, n - 1)]) / 2


def decile_effects(
    df: pd.DataFrame, memo: str, outcome: str, n_deciles: int = 10, n_boot: int = 2000, seed=0, ci_level: float = 0.95
) -> pd.DataFrame:
    """Median outcome per memo decile, and top-minus-bottom decile difference in medians.

    Rows with non-finite memo or outcome are dropped. Samples are split into ``n_deciles``
    equal-count bins by memo rank (ties broken by row order). ``term == "decile"`` rows: decile
    (1 = lowest memo), n, memo range, median outcome and its percentile-bootstrap CI.
    ``term == "top_minus_bottom"``: median(top) - median(bottom) with a two-sample (unpaired)
    percentile-bootstrap CI, and ``p`` from a two-sided Mann-Whitney U test of top vs bottom.
    The bootstrap resamples every decile independently (stratified), ``n_boot`` times, seeded by
    ``seed``; each resample's median is drawn from its exact distribution (``bootstrap_medians``,
    O(1) per draw, not O(n)); CIs are ``scipy.stats.quantile`` of the draws, as
    ``scipy.stats.bootstrap(method="percentile")`` computes them. Percentile, not BCa: BCa's
    acceleration uses the jackknife, which is inconsistent for the median, and outcomes such as
    d_dormant have many ties. Raises ValueError with fewer than 2 samples per decile.
    """
    require(df, [memo, outcome], "decile_effects")
    data = finite(df[[memo, outcome]], [memo, outcome])  # the two columns only: no copy of the rest
    if len(data) < 2 * n_deciles:
        raise ValueError(f"decile_effects: {len(data)} finite ({memo}, {outcome}) rows; need >= {2 * n_deciles}")
    dec = pd.qcut(data[memo].rank(method="first"), n_deciles, labels=False).to_numpy() + 1
    x = data[memo].to_numpy(float)
    y = data[outcome].to_numpy(float)
    groups = [y[dec == d] for d in range(1, n_deciles + 1)]
    rng = np.random.default_rng(seed)
    draws = np.stack([bootstrap_medians(g, n_boot, rng) for g in groups])  # (D, n_boot)
    draws = np.vstack([draws, draws[-1] - draws[0]])
    alpha = (1 - ci_level) / 2
    low, high = stats.quantile(draws, np.array([alpha, 1 - alpha]), axis=-1).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = stats.mannwhitneyu(groups[-1], groups[0], alternative="two-sided").pvalue
    medians = [float(np.median(g)) for g in groups]
    estimate = medians + [medians[-1] - medians[0]]
    rows = [
        {
            "term": "decile",
            "decile": d,
            "n": len(groups[d - 1]),
            "memo_min": x[dec == d].min(),
            "memo_max": x[dec == d].max(),
            "median": estimate[d - 1],
            "ci_low": float(low[d - 1]),
            "ci_high": float(high[d - 1]),
            "p": np.nan,
        }
        for d in range(1, n_deciles + 1)
    ]
    rows.append(
        {
            "term": "top_minus_bottom",
            "decile": pd.NA,
            "n": len(groups[-1]) + len(groups[0]),
            "memo_min": np.nan,
            "memo_max": np.nan,
            "median": estimate[-1],
            "ci_low": float(low[-1]),
            "ci_high": float(high[-1]),
            "p": float(p),
        }
    )
    out = pd.DataFrame(rows, columns=DECILE_COLUMNS)
    out["decile"] = out["decile"].astype("Int64")
    return out


def tails(
    df: pd.DataFrame,
    q: float,
    score_col: str,
    memo: str = "memo",
    threshold_quantile: float = 0.9,
    largest: bool = True,
) -> pd.DataFrame:
    """Memo enrichment of the extreme tail of a per-sample score, per boundary, and its persistence.

    ``df`` is one run and one kind (columns sample_id, boundary, score_col, memo). Per boundary,
    over the N samples with finite score and memo: the tail is the exact top k = ceil(q N)
    samples by score (``largest=False``: the bottom k), ties broken by ascending sample_id;
    m = the ``threshold_quantile`` quantile of memo over the N samples (numpy linear) and
    "high" = memo >= m. Reports p_high_tail = P(high | tail), p_high_all = P(high),
    enrichment = their ratio, the odds ratio and two-sided Fisher exact p of the 2x2 table
    (tail, high) (scipy), and jaccard_prev = |T_k & T_prev| / |T_k | T_prev| with the tail set
    of the previous boundary present (NaN for the first). The candidate pool grows as classes
    become old, so Jaccard is bounded by the pool overlap.
    """
    require(df, ["sample_id", "boundary", score_col, memo], "tails")
    if not 0 < q <= 1:
        raise ValueError(f"tails: q must be in (0, 1], got {q}")
    require_finite(df, [score_col, memo], "tails")
    rows, prev = [], None
    for boundary, g in df.groupby("boundary", sort=True):
        g = finite(g, [score_col, memo])
        n = len(g)
        if n == 0:
            continue
        k = max(1, math.ceil(q * n - 1e-9))
        ranked = g.assign(_s=g[score_col] if largest else -g[score_col]).sort_values(
            ["_s", "sample_id"], ascending=[False, True], kind="mergesort"
        )
        tail = set(ranked["sample_id"].iloc[:k])
        m = float(np.quantile(g[memo].to_numpy(float), threshold_quantile))
        high = g[memo].to_numpy(float) >= m
        in_tail = g["sample_id"].isin(tail).to_numpy()
        a, b = int((in_tail & high).sum()), int((in_tail & ~high).sum())
        c, d = int((~in_tail & high).sum()), int((~in_tail & ~high).sum())
        odds, p = stats.fisher_exact([[a, b], [c, d]])
        p_tail, p_all = a / k, high.mean()
        rows.append(
            {
                "boundary": boundary,
                "n": n,
                "k": k,
                "memo_threshold": m,
                "n_high": int(high.sum()),
                "n_tail_high": a,
                "p_high_tail": p_tail,
                "p_high_all": p_all,
                "enrichment": p_tail / p_all if p_all > 0 else np.nan,
                "odds_ratio": float(odds),
                "p": float(p),
                "jaccard_prev": len(tail & prev) / len(tail | prev) if prev is not None else np.nan,
            }
        )
        prev = tail
    return pd.DataFrame(rows, columns=TAIL_COLUMNS)


def mediation(
    df: pd.DataFrame,
    memo: str,
    mediator: str,
    outcome: str,
    sims: int = 200,
    seed=0,
    covariates: Sequence[str] = (),
    ci_level: float = 0.95,
) -> dict:
    """Causal mediation memo -> mediator -> outcome: statsmodels' ``Mediation`` with the bootstrap,
    computed in closed form for its two linear models (same draws, same numbers).

    Rows with a non-finite value in any used column are dropped. Mediator model: OLS
    ``mediator ~ memo + covariates``; outcome model: OLS ``outcome ~ memo + mediator +
    covariates``. As ``Mediation(...).fit(method="bootstrap", n_rep=sims, rng=default_rng(seed))``,
    per simulation: resample rows for the outcome model and refit it, then for the mediator model
    (``_simulations``); for the exposure set to t_m in (0, 1) draw potential mediators
    M(t_m) = X(t_m) alpha + sigma Z on every original row; predicted outcomes
    Y(t_m, t_e) = X(t_e, M(t_m)) beta; ACME(t) = mean_i Y(1, t) - Y(0, t), ADE(t) = mean_i
    Y(t, 1) - Y(t, 0) (``_simulations``). Effects are for the exposure set to 1 vs 0 (so scale memo
    accordingly, e.g. to a [0, 1] rank). Returns n and, for acme (average causal mediated effect =
    indirect), ade (direct), total and prop_mediated (ACME / total; its estimate is the bootstrap
    median): estimate, percentile CI at ``ci_level`` and statsmodels' bootstrap p
    (2 min(P(>0), P(<0)), resolution 2 / sims), as ``MediationResults.summary`` computes them. Equal to
    statsmodels' to rounding (tests/test_stats.py), without a model object per simulation.
    """
    covariates = list(covariates)
    cols = [memo, mediator, outcome] + covariates
    require(df, cols, "mediation")
    if len({memo, mediator, outcome}) < 3:
        raise ValueError(f"mediation: memo, mediator and outcome must differ, got {memo!r}, {mediator!r}, {outcome!r}")
    require_finite(df, cols, "mediation")
    data = finite(df[list(dict.fromkeys(cols))], cols)
    if len(data) < len(cols) + 3:
        raise ValueError(f"mediation: {len(data)} complete rows; need >= {len(cols) + 3}")
    n = len(data)
    # statsmodels' column order: const, exposure, covariates (mediator model); then the mediator
    exog_m = np.column_stack([np.ones(n), data[memo].to_numpy(float)] + [data[c].to_numpy(float) for c in covariates])
    med, y = data[mediator].to_numpy(float), data[outcome].to_numpy(float)
    fits = _ResampledOls(np.column_stack([exog_m, med]), y), _ResampledOls(exog_m, med)
    rng = np.random.default_rng(seed)
    effects_ = _simulations(*fits, sims, rng)  # (sims, 4)
    acme_ctrl, acme_tx, ade_ctrl, ade_tx = effects_.T
    total = (acme_ctrl + acme_tx + ade_ctrl + ade_tx) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        prop = (acme_ctrl / total + acme_tx / total) / 2
    draws = {"acme": (acme_ctrl + acme_tx) / 2, "ade": (ade_ctrl + ade_tx) / 2, "total": total, "prop_mediated": prop}
    alpha = 1 - ci_level
    out = {"n": n}
    for key, vec in draws.items():  # as MediationResults.summary: the mean (median for the proportion)
        out[key] = float(np.median(vec) if key == "prop_mediated" else vec.mean())
        out[f"{key}_ci_low"] = float(np.percentile(vec, 100 * alpha / 2))
        out[f"{key}_ci_high"] = float(np.percentile(vec, 100 * (1 - alpha / 2)))
        out[f"{key}_p"] = float(2 * min(np.sum(vec > 0), np.sum(vec < 0)) / len(vec))
    return out


class _ResampledOls:
    """OLS of y on X refit on n rows drawn with replacement (as statsmodels' bootstrap refit), for
    many draws at once: with a draw's row multiplicities c_i as weights, the normal equations
    (sum_i c_i x_i x_i') beta = sum_i c_i x_i y_i and the residual sum of squares
    sum_i c_i y_i^2 - beta' sum_i c_i x_i y_i come from one product c' P with the per-row terms
    P_i = (x_i x_i', x_i y_i, y_i^2) computed once; scale = RSS / (n - p)."""

    def __init__(self, exog: np.ndarray, endog: np.ndarray):
        self.n, self.p = exog.shape
        outer = (exog[:, :, None] * exog[:, None, :]).reshape(self.n, -1)
        self.terms = np.column_stack([outer, exog * endog[:, None], endog**2])

    def fit(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (k, p) and scales (k,) of the k draws with multiplicities ``counts`` (k, n)."""
        p = self.p
        sums = counts @ self.terms
        xty = sums[:, p * p : p * p + p]
        beta = np.linalg.solve(sums[:, : p * p].reshape(-1, p, p), xty[:, :, None])[:, :, 0]
        return beta, (sums[:, -1] - np.einsum("kp,kp->k", beta, xty)) / (self.n - p)


SIM_CHUNK = 50  # mediation simulations whose multiplicities are held at once (SIM_CHUNK x n float64, twice)


def _simulations(outcome_fit: _ResampledOls, mediator_fit: _ResampledOls, sims: int, rng) -> np.ndarray:
    """(sims, 4): ACME(0), ACME(1), ADE(0), ADE(1) of each bootstrap simulation of ``mediation``.

    Per simulation, in statsmodels' draw order: the outcome model's resample, the mediator
    model's, then Z for t_m = 0 and 1 on every row. Exposure is column 1 of both designs, the
    mediator the outcome design's last. Linear models without interaction:
    Y(1, t) - Y(0, t) = beta_m (M(1) - M(0)) and Y(t, 1) - Y(t, 0) = beta_x on every row, so
    ACME(0) = ACME(1) = beta_m mean_i (alpha_x + sigma (Z1_i - Z0_i)) and ADE(0) = ADE(1) = beta_x.
    The draws are made one simulation at a time; the refits of ``SIM_CHUNK`` at once."""
    n, out = outcome_fit.n, []
    for s0 in range(0, sims, SIM_CHUNK):
        k = min(SIM_CHUNK, sims - s0)
        c_y, c_m, dz = np.empty((k, n)), np.empty((k, n)), np.empty(k)
        for j in range(k):
            c_y[j] = np.bincount(rng.integers(0, n, n), minlength=n)
            c_m[j] = np.bincount(rng.integers(0, n, n), minlength=n)
            z0 = rng.standard_normal(n)
            dz[j] = np.mean(rng.standard_normal(n) - z0)
        beta, _ = outcome_fit.fit(c_y)
        alpha, scale = mediator_fit.fit(c_m)
        acme = beta[:, -1] * (alpha[:, 1] + np.sqrt(scale) * dz)
        out.append(np.column_stack([acme, acme, beta[:, 1], beta[:, 1]]))
    return np.concatenate(out)


def cross_sample(deltas: pd.DataFrame, kinds: Sequence[str] = KINDS) -> pd.DataFrame:
    """Do memorized *new* classes hurt *old* samples? Per run, kind and boundary.

    new_memo_mean = mean memo of the new-class samples (is_old False) at the boundary,
    old_d_loss_mean = mean d_loss of the old-class samples (finite values only; counts n_new,
    n_old). Per run and kind, spearman_r = Spearman of the two means across boundaries
    (n_boundaries used; NaN with < 3), repeated on each of that run's rows. Descriptive: with a
    handful of boundaries no test of it could reach a small p, so none is reported. Raises ValueError if there
    are no new-class rows.
    """
    require(deltas, RUN_KEYS + ["boundary", "is_old", "kind", "memo", "d_loss"], "cross_sample")
    data = rows_of_kinds(deltas, kinds)
    is_old = data["is_old"].astype(bool)
    if not (~is_old).any():
        raise ValueError("cross_sample: no new-class rows (is_old == False) in the deltas table")
    rows = []
    for key, g in data.groupby(RUN_KEYS + ["kind"], sort=True):
        ident = key_dict(RUN_KEYS + ["kind"], key)
        per_b = []
        for boundary, gb in g.groupby("boundary", sort=True):
            old_mask = gb["is_old"].astype(bool)
            new_memo = finite(gb[~old_mask], ["memo"])["memo"]
            old_loss = finite(gb[old_mask], ["d_loss"])["d_loss"]
            per_b.append(
                {
                    **ident,
                    "boundary": boundary,
                    "n_new": len(new_memo),
                    "new_memo_mean": new_memo.mean() if len(new_memo) else np.nan,
                    "n_old": len(old_loss),
                    "old_d_loss_mean": old_loss.mean() if len(old_loss) else np.nan,
                }
            )
        table = pd.DataFrame(per_b)
        both = finite(table, ["new_memo_mean", "old_d_loss_mean"])
        r = np.nan
        if len(both) >= 3 and both["new_memo_mean"].nunique() > 1 and both["old_d_loss_mean"].nunique() > 1:
            r = float(stats.spearmanr(both["new_memo_mean"], both["old_d_loss_mean"]).statistic)
        rows.append(table.assign(spearman_r=r, n_boundaries=len(both)))
    return pd.concat(rows, ignore_index=True)[CROSS_SAMPLE_COLUMNS]
