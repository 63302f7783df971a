"""Effect sizes beyond one coefficient: memo-decile medians, extreme-tail enrichment, mediation,
and the descriptive cross-sample table (per run; rows are samples, so resampling rows is
resampling samples)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.mediation import Mediation

from memplast.stats.common import KINDS, RUN_KEYS, finite, key_dict, require, require_finite

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


def decile_effects(
    df: pd.DataFrame, memo: str, outcome: str, n_deciles: int = 10, n_boot: int = 2000, seed=0, ci_level: float = 0.95
) -> pd.DataFrame:
    """Median outcome per memo decile, and top-minus-bottom decile difference in medians.

    Rows with non-finite memo or outcome are dropped. Samples are split into ``n_deciles``
    equal-count bins by memo rank (ties broken by row order). ``term == "decile"`` rows: decile
    (1 = lowest memo), n, memo range, median outcome and its percentile-bootstrap CI.
    ``term == "top_minus_bottom"``: median(top) - median(bottom) with a two-sample (unpaired)
    percentile-bootstrap CI, and ``p`` from a two-sided Mann-Whitney U test of top vs bottom.
    Percentile, not BCa: BCa's acceleration uses the jackknife, which is inconsistent for the
    median, and outcomes such as d_dormant have many ties. Bootstraps use ``n_boot`` resamples
    seeded by ``seed``. Raises ValueError with fewer than 2 samples per decile.
    """
    require(df, [memo, outcome], "decile_effects")
    data = finite(df, [memo, outcome])
    if len(data) < 2 * n_deciles:
        raise ValueError(f"decile_effects: {len(data)} finite ({memo}, {outcome}) rows; need >= {2 * n_deciles}")
    dec = pd.qcut(data[memo].rank(method="first"), n_deciles, labels=False).to_numpy() + 1
    x = data[memo].to_numpy(float)
    y = data[outcome].to_numpy(float)
    groups = [y[dec == d] for d in range(1, n_deciles + 1)]

    def medians_and_difference(*samples, axis=-1):
        meds = [np.median(s, axis=axis) for s in samples]
        return np.stack(meds + [meds[-1] - meds[0]])

    # One unpaired bootstrap resamples every decile independently (a stratified bootstrap);
    # the statistic returns the D medians and top - bottom, so all CIs share the resamples.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = stats.bootstrap(
            groups,
            medians_and_difference,
            vectorized=True,
            n_resamples=n_boot,
            confidence_level=ci_level,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        p = stats.mannwhitneyu(groups[-1], groups[0], alternative="two-sided").pvalue
    estimate = medians_and_difference(*groups)
    rows = [
        {
            "term": "decile",
            "decile": d,
            "n": len(groups[d - 1]),
            "memo_min": x[dec == d].min(),
            "memo_max": x[dec == d].max(),
            "median": float(estimate[d - 1]),
            "ci_low": float(ci.low[d - 1]),
            "ci_high": float(ci.high[d - 1]),
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
            "median": float(estimate[-1]),
            "ci_low": float(ci.low[-1]),
            "ci_high": float(ci.high[-1]),
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
    """Causal mediation memo -> mediator -> outcome with statsmodels' ``Mediation``.

    Rows with a non-finite value in any used column are dropped. Mediator model: OLS
    ``mediator ~ memo + covariates``; outcome model: OLS ``outcome ~ memo + mediator +
    covariates``. ``Mediation.fit(method="bootstrap", n_rep=sims)`` (seeded) resamples rows,
    refits both models and simulates potential mediators; effects are for the exposure set to 1
    vs 0 (so scale memo accordingly, e.g. to a [0, 1] rank). Returns n and, for acme (average
    causal mediated effect = indirect), ade (direct), total and prop_mediated (ACME / total;
    its estimate is the bootstrap median): estimate, percentile CI at ``ci_level`` and
    statsmodels' bootstrap p (2 min(P(>0), P(<0)), resolution 2 / sims).
    """
    covariates = list(covariates)
    cols = [memo, mediator, outcome] + covariates
    require(df, cols, "mediation")
    if len({memo, mediator, outcome}) < 3:
        raise ValueError(f"mediation: memo, mediator and outcome must differ, got {memo!r}, {mediator!r}, {outcome!r}")
    require_finite(df, cols, "mediation")
    data = finite(df, cols)
    if len(data) < len(cols) + 3:
        raise ValueError(f"mediation: {len(data)} complete rows; need >= {len(cols) + 3}")
    exog_m = sm.add_constant(
        pd.DataFrame(
            {"x": data[memo].to_numpy(float), **{f"c{i}": data[c].to_numpy(float) for i, c in enumerate(covariates)}}
        )
    )
    exog_y = exog_m.assign(m=data[mediator].to_numpy(float))
    mediator_model = sm.OLS(data[mediator].to_numpy(float), exog_m)
    outcome_model = sm.OLS(data[outcome].to_numpy(float), exog_y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = Mediation(outcome_model, mediator_model, "x", "m").fit(
            method="bootstrap", n_rep=sims, rng=np.random.default_rng(seed)
        )
        table = res.summary(alpha=1 - ci_level)
    names = {
        "acme": "ACME (average)",
        "ade": "ADE (average)",
        "total": "Total effect",
        "prop_mediated": "Prop. mediated (average)",
    }
    out = {"n": len(data)}
    for key, label in names.items():
        est, lo, hi, p = (float(v) for v in table.loc[label])
        out.update({key: est, f"{key}_ci_low": lo, f"{key}_ci_high": hi, f"{key}_p": p})
    return out


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
    data = deltas[deltas["kind"].isin(list(kinds))]
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
