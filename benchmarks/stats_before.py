"""Frozen copy of the per-cell draw of ``memplast.stats.resampling`` before issue 25 (float64 ranks
per variable and replicate chunk, a fresh ``scipy.stats.rankdata`` sort per permutation of a cell
that is not closed), for the before/after comparison of ``bench_stats.py`` in one process.

``patched()`` swaps these (and the old ``RankIndex``: sort order, group starts, inverse) into ``memplast.stats.resampling`` for the duration of a ``with`` block;
the library itself keeps one implementation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from scipy import stats

from memplast.stats import resampling


@dataclass
class RankIndex:
    """Sort order and tie groups of one value vector, so weighted ranks need no sort."""

    order: np.ndarray
    starts: np.ndarray
    inverse: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> RankIndex:
        order = np.argsort(values, kind="stable")
        s = values[order]
        new = np.r_[True, s[1:] != s[:-1]]
        inverse = np.empty(len(values), dtype=np.int64)
        inverse[order] = np.cumsum(new) - 1
        return cls(order, np.flatnonzero(new), inverse)

    def ranks(self, w: np.ndarray) -> np.ndarray:
        """Average ranks under multiplicities ``w`` (n, b): cumsum(g) - (g - 1) / 2 per tie group
        (samples along axis 0, so every gather and segment sum moves whole rows of b replicates)."""
        g = w[self.order]
        if len(self.starts) < len(self.order):
            g = np.add.reduceat(g, self.starts, axis=0)
        avg = np.cumsum(g, axis=0)
        avg -= (g - 1) / 2
        return avg[self.inverse]


def _colsum(a, b):
    return np.einsum("ij,ij->j", a, b)


class _Moments:
    """Weighted centred ranks of one variable, and its class sums, for one batch of weights."""

    def __init__(self, r: np.ndarray, w: np.ndarray, n_w: np.ndarray, class_starts: np.ndarray):
        self.c = r
        self.c -= (n_w + 1) / 2  # weighted mean rank is (N + 1) / 2 exactly
        self.wc = w * self.c
        self.by_class = np.add.reduceat(self.wc, class_starts, axis=0)


def _within(sab, a: _Moments, b: _Moments, w_class):
    """Class-demeaned weighted cross-product: S_ab - sum_c A_c B_c / W_c."""
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(w_class > 0, a.by_class * b.by_class / np.where(w_class > 0, w_class, 1), 0.0)
    return sab - corr.sum(axis=0)


def cell_statistics(
    w: np.ndarray,
    x: _Moments,
    l: _Moments,  # noqa: E741
    y: _Moments,
    w_class: np.ndarray,
    sxx: np.ndarray,
    sll: np.ndarray,
    sxl: np.ndarray,
) -> np.ndarray:
    """(b, 2): raw Spearman and within-class partial Spearman given r(loss_t) (module docstring)."""
    sxy, syy, syl = _colsum(x.wc, y.c), _colsum(y.wc, y.c), _colsum(l.wc, y.c)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = sxy / np.sqrt(sxx * syy)
        txx, tyy, tll = _within(sxx, x, x, w_class), _within(syy, y, y, w_class), _within(sll, l, l, w_class)
        txy, txl, tyl = _within(sxy, x, y, w_class), _within(sxl, x, l, w_class), _within(syl, y, l, w_class)
        pxx, pyy, pxy = txx - txl**2 / tll, tyy - tyl**2 / tll, txy - txl * tyl / tll
        partial = pxy / np.sqrt(pxx * pyy)
    return np.clip(np.stack([raw, partial], axis=1), -1, 1)


def _cell_chunks(cell: resampling.Cell, w: np.ndarray) -> np.ndarray:
    """``_cell_batch`` over replicate chunks of at most ``CELL_ELEMENTS`` weights."""
    step = max(1, 1_000_000 // len(cell.idx))
    return np.concatenate(
        [_cell_batch(cell, w[:, i : i + step].astype(np.float64)) for i in range(0, w.shape[1], step)]
    )


def _cell_batch(cell: resampling.Cell, w: np.ndarray, memo_ranks: np.ndarray | None = None) -> np.ndarray:
    """(b, n_outcomes, 2) statistics of ``cell`` under multiplicities ``w`` (n, b); ``memo_ranks``
    (n, b) overrides the memo ranks (permutation null, unit weights)."""
    w = np.asarray(w, dtype=np.float64)
    n_w = w.sum(axis=0)
    xr = cell.memo_rank.ranks(w) if memo_ranks is None else np.array(memo_ranks, dtype=np.float64)
    x = _Moments(xr, w, n_w, cell.class_starts)
    l = _Moments(cell.loss_rank.ranks(w), w, n_w, cell.class_starts)  # noqa: E741
    w_class = np.add.reduceat(w, cell.class_starts, axis=0)
    sxx, sll, sxl = _colsum(x.wc, x.c), _colsum(l.wc, l.c), _colsum(x.wc, l.c)
    out = np.empty((w.shape[1], len(cell.outcomes), 2))
    for j, yr in enumerate(cell.y_rank):
        y = _Moments(yr.ranks(w), w, n_w, cell.class_starts)
        out[:, j] = cell_statistics(w, x, l, y, w_class, sxx, sll, sxl)
    return out


def _null_general(cell, static, perm_rows):
    """Old null of a cell that is not closed: rank the permuted memo with a sort per permutation."""
    return _cell_batch(cell, np.ones(perm_rows.shape), memo_ranks=stats.rankdata(static[perm_rows], axis=0))


def _null_closed(cell: resampling.Cell, xr: np.ndarray) -> np.ndarray:
    """(p, n_outcomes, 2) statistics of a closed cell with unit weights and permuted memo ranks
    ``xr`` (n, p): the outcome and loss ranks, every class sum of the memo ranks and S_xx do not
    change under a within-class permutation, so only S_xy and S_xl are new: one matrix product."""
    n = len(cell.idx)
    one = np.ones((n, 1))
    centre = (n + 1) / 2
    x0 = cell.memo_rank.ranks(one)[:, 0] - centre
    lc = cell.loss_rank.ranks(one)[:, 0] - centre
    ycs = np.stack([yr.ranks(one)[:, 0] - centre for yr in cell.y_rank], axis=1)  # (n, J)
    starts = cell.class_starts
    wc = np.diff(np.r_[starts, n]).astype(float)
    xc_class, lc_class = np.add.reduceat(x0, starts), np.add.reduceat(lc, starts)
    yc_class = np.add.reduceat(ycs, starts, axis=0)  # (C, J)
    sxx, sll = x0 @ x0, lc @ lc
    syy, syl = np.einsum("ij,ij->j", ycs, ycs), lc @ ycs
    txx, tll = sxx - np.sum(xc_class**2 / wc), sll - np.sum(lc_class**2 / wc)
    tyy = syy - np.sum(yc_class**2 / wc[:, None], axis=0)
    tyl = syl - (lc_class / wc) @ yc_class
    xc = xr - centre  # (n, p)
    prod = xc.T @ np.column_stack([ycs, lc])  # (p, J + 1)
    sxy, sxl = prod[:, :-1], prod[:, -1]
    txy = sxy - (xc_class / wc) @ yc_class
    txl = sxl - np.sum(xc_class * lc_class / wc)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = sxy / np.sqrt(sxx * syy)
        pxx = txx - txl**2 / tll
        pyy = tyy - tyl**2 / tll
        pxy = txy - txl[:, None] * tyl[None, :] / tll
        partial = pxy / np.sqrt(pxx[:, None] * pyy[None, :])
    return np.clip(np.stack([raw, partial], axis=2), -1, 1)


@contextlib.contextmanager
def patched():
    """``memplast.stats.resampling`` with the old per-cell draw functions."""
    names = ("RankIndex", "_cell_draws", "_null_general", "_null_stats")
    saved = {k: getattr(resampling, k) for k in names}
    resampling.RankIndex = RankIndex  # build_cells then keeps the old sort order / inverse per variable
    # today's call signatures ((p, n) permutation layout, precomputed parts) onto the old functions
    resampling._cell_draws = lambda cell, counts: _cell_chunks(cell, counts[:, cell.idx].T)
    resampling._null_general = lambda cell, static, perm_rows, fixed: _null_general(cell, static, perm_rows.T)
    resampling._null_stats = lambda cell, xr, fixed, memo=None: _null_closed(cell, xr.T)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(resampling, k, v)
