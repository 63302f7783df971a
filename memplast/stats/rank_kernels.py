"""Compiled (numba) kernels of the sample bootstrap: weighted ranks from one sort, and a cell's
rank cross-products for a batch of draws in one pass, without a sort or a temporary per draw.

Weighted ranks: with the rows in the sorted order of a variable (``order``; ``start[i]`` marks
sorted position i as the first of a tie group) and integer weights w, the tie group g holding
total weight W_g after cumulative weight G_prev gets the doubled average rank
Q = 2 r - 1 = G_prev + (G_prev + W_g) (``doubled_ranks``): r is the average rank of the resample,
ties averaged as ``scipy.stats.rankdata``.

Cross-products (``cell_sums``): per draw, the sums sum_i w_i Q_a,i Q_b,i of the pairs the cell
statistics need (memo x memo, memo x loss, loss x loss, and memo, loss and itself x each outcome),
the class sums sum_{i in c} w_i Q_a,i and class weights W_c, and N = sum w. Every term is an integer
below 2^53 (Q < 2 N, N <= 2^17 rows), so the float64 sums are exact in any summation order and
equal ``numpy.matmul`` of the same integers: the statistics computed from them are bitwise those of
the matrix formulation (``resampling.cell_statistics``, the reference the tests compare against).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Reassociation and fused multiply-add change nothing in sums of integers below 2^53, and let the
# compiler vectorise the reductions.
EXACT = {"reassoc", "contract"}


@njit(nogil=True, cache=True)
def doubled_ranks(order, start, w, out):
    """out[row] = G_prev + G of the row's tie group (doubled average rank minus one, 2 r - 1) under
    weights ``w`` (rows); ``order`` the rows in sorted order, ``start`` the tie-group starts."""
    n = len(order)
    g = w[:0].sum()  # zero of the weights' type: integer cumulative sums where the weights are
    if start.all():  # no ties: every group is one row (the common case, a loop without branches)
        for i in range(n):
            row = order[i]
            x = w[row]
            out[row] = 2 * g + x
            g += x
        return
    i = 0
    while i < n:
        total = w[order[i]]
        j = i + 1
        while j < n and not start[j]:
            total += w[order[j]]
            j += 1
        q = 2 * g + total
        for m in range(i, j):
            out[order[m]] = q
        g += total
        i = j


@njit(nogil=True, cache=True)
def doubled_ranks_rows(order, start, w, out):
    """``doubled_ranks`` of every row of ``w`` (b, n) into ``out`` (b, n)."""
    for r in range(w.shape[0]):
        doubled_ranks(order, start, w[r], out[r])


@njit(nogil=True, cache=True)
def subset_ranks(order, start, taken, out):
    """Average ranks within a subset, per row p of ``taken`` (p, n): positions in a pool sorted by
    (``order``, ``start``); out[p, i] = the rank of pool element taken[p, i] among the elements
    taken[p, :] (weight 1 on the taken, 0 elsewhere), ties averaged."""
    m = len(order)
    w = np.zeros(m, np.int32)
    q = np.empty(m, np.int32)
    for r in range(taken.shape[0]):
        row = taken[r]
        for i in range(len(row)):
            w[row[i]] = 1
        doubled_ranks(order, start, w, q)
        for i in range(len(row)):
            out[r, i] = (q[row[i]] + 1) / 2
            w[row[i]] = 0


# The moment kernels loop over each class's slice from index 0: with a loop index the compiler
# knows is non-negative, numba drops its negative-index wraparound and the loop vectorises (~4x).


@njit(nogil=True, cache=True, fastmath=EXACT)
def _base_moments(w, qx, ql, bounds, s, class_weight, class_x, class_l):
    """One pass over the rows: s = (N, sum w qx qx, sum w qx ql, sum w ql ql) and per class c
    (rows bounds[c]:bounds[c + 1]) W_c, sum_c w qx and sum_c w ql."""
    total = sxx = sxl = sll = 0.0
    for c in range(len(bounds) - 1):
        ws, xs, ls = w[bounds[c] : bounds[c + 1]], qx[bounds[c] : bounds[c + 1]], ql[bounds[c] : bounds[c + 1]]
        wc = xc = lc = 0.0
        for i in range(len(ws)):
            wi, xi, li = np.float64(ws[i]), np.float64(xs[i]), np.float64(ls[i])
            wx, wl = wi * xi, wi * li
            sxx += wx * xi
            sxl += wx * li
            sll += wl * li
            wc += wi
            xc += wx
            lc += wl
        class_weight[c], class_x[c], class_l[c] = wc, xc, lc
        total += wc
    s[0], s[1], s[2], s[3] = total, sxx, sxl, sll


@njit(nogil=True, cache=True, fastmath=EXACT)
def _moments(w, qx, ql, q, bounds, s, class_sums):
    """One pass over the rows: s = (sum w qx q, sum w ql q, sum w q q) and class_sums[c] = the sum
    of w q over class c (rows bounds[c]:bounds[c + 1])."""
    sx = sl = sq = 0.0
    for c in range(len(bounds) - 1):
        lo, hi = bounds[c], bounds[c + 1]
        ws, xs, ls, qs = w[lo:hi], qx[lo:hi], ql[lo:hi], q[lo:hi]
        sc = 0.0
        for i in range(len(ws)):
            qi = np.float64(qs[i])
            wq = np.float64(ws[i]) * qi
            sx += wq * np.float64(xs[i])
            sl += wq * np.float64(ls[i])
            sq += wq * qi
            sc += wq
        class_sums[c] = sc
    s[0], s[1], s[2] = sx, sl, sq


@njit(nogil=True, cache=True)
def cell_sums(counts, idx, orders, starts, class_starts, sums, class_sums, class_weight, total):
    """For each draw r (a row of ``counts``, multiplicities per universe sample): the weights
    w_i = counts[r, idx[i]] of the cell's rows, the doubled ranks Q of every variable (``orders``,
    ``starts``: (k, n), variable 0 memo, 1 loss_t, 2.. outcomes), and into ``sums`` (b, k, k) the
    cross-products sum w Q_a Q_b of the pairs (0, 0), (0, 1), (1, 1), (0, j), (1, j), (j, j) (both
    triangles; the pairs of two outcomes are left 0: no statistic uses them), ``class_sums``
    (b, k, C) = sum_{i in c} w_i Q_a,i, ``class_weight`` (b, C) = W_c and ``total`` (b,) = N.
    Weights and ranks are held as int32 (integer cumulative sums), products and sums in float64."""
    k, n = orders.shape
    w, qx, ql, qy = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int32)
    m = np.empty(4)
    bounds = np.empty(len(class_starts) + 1, np.int64)
    bounds[:-1], bounds[-1] = class_starts, n
    for r in range(counts.shape[0]):
        for i in range(n):
            w[i] = counts[r, idx[i]]
        doubled_ranks(orders[0], starts[0], w, qx)
        doubled_ranks(orders[1], starts[1], w, ql)
        s = sums[r]
        _base_moments(w, qx, ql, bounds, m, class_weight[r], class_sums[r, 0], class_sums[r, 1])
        total[r], s[0, 0], s[0, 1], s[1, 1] = m[0], m[1], m[2], m[3]
        s[1, 0] = s[0, 1]
        for v in range(2, k):
            doubled_ranks(orders[v], starts[v], w, qy)
            _moments(w, qx, ql, qy, bounds, m, class_sums[r, v])
            s[0, v] = s[v, 0] = m[0]
            s[1, v] = s[v, 1] = m[1]
            s[v, v] = m[2]
