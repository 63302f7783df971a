"""The sample bootstrap and the within-class permutation: one draw per replicate, every cell at once.

The unit of inference is the sample: the same sample ids recur at every boundary, in every class
order and every condition, carry persistent effects of their own, and cluster by class. So a
bootstrap replicate draws sample ids, stratified by class (each class keeps its size), once; every
cell (condition x class order x kind x boundary) is then re-estimated from that same draw, as
weighted statistics with the draw's multiplicity counts w_i as weights. Pooled estimates over
orders and boundaries, trends and condition differences are functions of the cell estimates of
one replicate, so their bootstrap distributions carry every dependence between cells.

Cell statistics (``cell_statistics``), with w_i the multiplicity of sample i in the draw (all 1 for
the estimate itself), ranks taken within the cell:

- rank r(v)_i = sum_{j: v_j < v_i} w_j + (sum_{j: v_j = v_i} w_j + 1) / 2 (average ranks of the
  resampled data, ties averaged exactly as ``scipy.stats.rankdata``);
- raw = weighted Pearson correlation of r(memo) and r(outcome) = Spearman rho of the resample;
- partial = weighted partial correlation of r(memo) and r(outcome) given class (fixed effects)
  and r(loss_t): with S_ab = sum_i w_i a~_i b~_i of class-demeaned (weighted) ranks,
  S'_ab = S_ab - S_al S_bl / S_ll and partial = S'_xy / sqrt(S'_xx S'_yy), the within-class
  partial Spearman (equal to residualising the ranks on class dummies and r(loss_t) by OLS).

Computation (no sort and no per-cell Python loop over replicates): each variable is sorted once
(``RankIndex``); a draw's ranks are cumulative sums of its integer weights in that order, kept as
doubled ranks Q = 2 r - 1 (integers). A compiled kernel (``rank_kernels.cell_sums``) takes a batch
of draws and, per draw, the weights of the cell's rows, every variable's doubled ranks and the
cross-products sum_i w_i Q_a Q_b and class sums the statistics need, in one pass that stays in the
cache; the sums are integers below 2^53, exact, so the statistics (``statistics_from_sums``) equal
the matrix formulation (``cell_statistics``: rank matrices and ``numpy.matmul``, kept as the
reference) bit for bit, and the sort-per-draw definition to rounding of the final divisions (tested
against ``scipy.stats.rankdata`` on the explicit resample). The permutation null keeps the loss and
outcome ranks fixed: per permutation only memo's ranks change, and S_xy, S_xl of all permutations
are one matrix product (``_null_stats``); memo ranks of a cell without whole classes are weighted
ranks over its classes' samples, not a sort (``_null_general``).

Cost: O(B n k) per cell (k = 2 + outcomes); draws in batches of ``COUNT_ELEMENTS // S``
replicates (S = samples), the null in chunks of ``NULL_ELEMENTS // n`` permutations, so memory
stays bounded at any scale. benchmarks/bench_stats.py measures it at paper size against the
previous implementation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from memplast.stats import rank_kernels
from memplast.stats.common import MIN_N, require

log = logging.getLogger("memplast.stats")

COUNT_ELEMENTS = 20_000_000  # replicates x samples of one batch of draws (uint16): set by the universe size only
NULL_ELEMENTS = 1_000_000  # permutations x rows of one cell's null evaluated at once


@dataclass
class Universe:
    """The samples that can be drawn: sorted ids, their class, and universe indices per class."""

    sample_id: np.ndarray
    label: np.ndarray
    strata: list = field(default_factory=list)

    @classmethod
    def of(cls, rows: pd.DataFrame) -> Universe:
        """Universe of the sample ids in ``rows`` (columns sample_id, label; one label per id)."""
        ids = rows[["sample_id", "label"]].drop_duplicates()
        if ids["sample_id"].duplicated().any():
            raise ValueError("Universe: a sample_id has more than one label in the deltas table")
        ids = ids.sort_values("sample_id")
        sid, lab = ids["sample_id"].to_numpy(), ids["label"].to_numpy()
        strata = [np.flatnonzero(lab == c) for c in np.unique(lab)]
        return cls(sid, lab, strata)

    def index(self, sample_ids) -> np.ndarray:
        return np.searchsorted(self.sample_id, np.asarray(sample_ids))


def stratified_counts(universe: Universe, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, S) multiplicities of one class-stratified bootstrap draw per row: within each class of
    size n_c, counts ~ Multinomial(n_c, 1/n_c each), so every class keeps its size."""
    out = np.zeros((n, len(universe.sample_id)), dtype=np.uint16)
    for idx in universe.strata:
        out[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n)
    return out


def within_class_permutations(universe: Universe, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, S) universe indices: row p maps sample i to the sample whose memo it takes, a uniform
    random permutation within each class (shared by every boundary, order and condition)."""
    out = np.empty((n, len(universe.sample_id)), dtype=np.int32)
    for idx in universe.strata:
        out[:, idx] = idx[rng.permuted(np.broadcast_to(np.arange(len(idx)), (n, len(idx))), axis=1)]
    return out


@dataclass
class RankIndex:
    """One value vector's sort, all weighted ranks need without a sort per draw: the rows in sorted
    order (stable) and, per sorted position, whether it starts a new tie group."""

    order: np.ndarray  # uint32 (non-negative: the compiled loops skip wraparound checks)
    start: np.ndarray  # bool

    @classmethod
    def of(cls, values: np.ndarray) -> RankIndex:
        order = np.argsort(values, kind="stable")
        s = values[order]
        return cls(order.astype(np.uint32), np.r_[True, s[1:] != s[:-1]])

    def doubled(self, w: np.ndarray) -> np.ndarray:
        """(b, n) doubled average ranks Q = 2 r - 1 of the rows under multiplicities ``w`` (b, n;
        integers, so exact): ``rank_kernels.doubled_ranks`` per row."""
        w = np.ascontiguousarray(w, dtype=np.float64)
        out = np.empty_like(w)
        rank_kernels.doubled_ranks_rows(self.order, self.start, w, out)
        return out

    def ranks(self, w: np.ndarray) -> np.ndarray:
        """(n, b) average ranks (ties averaged as ``scipy.stats.rankdata``) under multiplicities w (n, b)."""
        return (self.doubled(np.asarray(w).T) + 1).T / 2


def cell_statistics(q: np.ndarray, w: np.ndarray, class_starts: np.ndarray) -> np.ndarray:
    """(b, J, 2): raw Spearman and within-class partial Spearman given r(loss_t) of each outcome,
    from the doubled ranks ``q`` (b, k, n) of memo, loss_t and the J outcomes and the multiplicities
    ``w`` (b, n): the matrix formulation (every cross-product of a replicate in one matrix product),
    the reference ``rank_kernels.cell_sums`` is tested against."""
    wq = q * w[:, None, :]
    sums = np.matmul(wq, q.transpose(0, 2, 1))
    class_sums = np.add.reduceat(wq, class_starts, axis=2)
    return statistics_from_sums(sums, class_sums, np.add.reduceat(w, class_starts, axis=1), w.sum(axis=1))


def statistics_from_sums(sums: np.ndarray, class_sums: np.ndarray, w_class: np.ndarray, n_w: np.ndarray) -> np.ndarray:
    """(b, J, 2) raw and partial Spearman from a replicate's rank sums: ``sums`` (b, k, k) =
    sum w Q_a Q_b, ``class_sums`` (b, k, C) = sum_c w Q_a, ``w_class`` (b, C) = W_c, ``n_w`` (b,) = N.

    With N = sum w, the centred ranks are c = (Q - N) / 2 and sum w Q = N^2, so
    S_ab = sum w c_a c_b = (sum w Q_a Q_b - N^3) / 4; class sums A_c = (sum_c w Q_a - N W_c) / 2;
    T_ab = S_ab - sum_c A_ca A_cb / W_c (class-demeaned, one matrix product),
    partial = T'_xy / sqrt(T'_xx T'_yy) with T'_ab = T_ab - T_al T_bl / T_ll (module docstring)."""
    s = (sums - (n_w**3)[:, None, None]) / 4  # (b, k, k)
    a = (class_sums - n_w[:, None, None] * w_class[:, None, :]) / 2  # (b, k, C)
    live = w_class > 0
    inv = np.where(live, 1 / np.where(live, w_class, 1), 0.0)
    t = s - np.matmul(a * inv[:, None, :], a.transpose(0, 2, 1))  # (b, k, k)
    ys = np.arange(2, sums.shape[1])
    sxx, sxy, syy = s[:, 0, 0], s[:, 0, 2:], s[:, ys, ys]
    txx, tll, txl = t[:, 0, 0], t[:, 1, 1], t[:, 0, 1]
    txy, tyl, tyy = t[:, 0, 2:], t[:, 1, 2:], t[:, ys, ys]
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = sxy / np.sqrt(sxx[:, None] * syy)
        pxx = txx - txl**2 / tll
        pyy = tyy - tyl**2 / tll[:, None]
        pxy = txy - txl[:, None] * tyl / tll[:, None]
        partial = pxy / np.sqrt(pxx[:, None] * pyy)
    return np.clip(np.stack([raw, partial], axis=2), -1, 1)


@dataclass
class Cell:
    """One (cell key, outcome set): rows sorted by class, rank indexes of memo, loss_t, outcomes."""

    key: dict
    outcomes: list
    idx: np.ndarray  # universe index per row
    class_starts: np.ndarray
    memo_rank: RankIndex
    loss_rank: RankIndex
    y_rank: list
    closed: bool  # every class in the cell is complete, so a within-class permutation maps it onto itself
    pool: np.ndarray | None  # open cells: universe indices of the samples of its classes (permuted memo's source)
    pool_rank: RankIndex | None = None  # their memo's rank index (``_null_general``, built once)


def build_cells(
    old: pd.DataFrame, universe: Universe, keys: Sequence[str], outcomes: Sequence[str], memo: str = "memo"
) -> list[Cell]:
    """Cells of ``old`` (old-class rows) per combination of ``keys``; rows need finite memo, loss_t
    and outcome; outcomes sharing the same finite rows share one Cell (and its memo/loss ranks).
    Cells with fewer than ``MIN_N`` rows are left out (their statistics are NaN)."""
    require(old, list(keys) + ["sample_id", "label", "loss_t", memo] + list(outcomes), "build_cells")
    labels = np.unique(universe.label)
    class_size = np.bincount(np.searchsorted(labels, universe.label), minlength=len(labels))
    keep = np.isfinite(old[[memo, "loss_t"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)).all(axis=1)
    data = old if keep.all() else old[keep]  # no copy of a paper-size table that is all finite
    if data.empty:
        raise ValueError("build_cells: no old-class rows with finite memo and loss_t")
    # group number in sorted key order (= groupby(keys, sort=True).ngroup(), without its copies):
    # the keys' sorted codes as one mixed-radix number, then its sorted codes (one array at a time)
    flat = np.zeros(len(data), dtype=np.int64)
    for k in keys:
        codes, levels = pd.factorize(data[k], sort=True)
        if (codes < 0).any():
            raise ValueError(f"build_cells: column {k!r} has missing values; every row needs its cell key")
        flat *= len(levels)
        flat += codes
    code = pd.factorize(flat, sort=True)[0].astype(np.int32)
    del flat, codes
    lab_all = np.searchsorted(labels, data["label"].to_numpy()).astype(np.int32)
    sid_all = universe.index(data["sample_id"].to_numpy()).astype(np.int32)
    memo_all = data[memo].to_numpy(float)  # views of the table's columns where they are float64
    loss_all = data["loss_t"].to_numpy(float)
    ys_all = [pd.to_numeric(data[o], errors="coerce").to_numpy(float) for o in outcomes]
    order = np.lexsort((sid_all, lab_all, code))
    bounds = np.flatnonzero(np.r_[True, np.diff(code[order]) != 0, True])
    firsts = data[list(keys)].iloc[order[bounds[:-1]]].to_dict("records")  # the key of group g (sorted)
    cells = []
    for gi in range(len(bounds) - 1):
        rows = order[bounds[gi] : bounds[gi + 1]]
        key = firsts[int(code[rows[0]])]
        if len(np.unique(sid_all[rows])) < len(rows):
            raise ValueError(f"build_cells: sample ids repeat within cell {key}; one row per sample expected")
        ok = np.column_stack([np.isfinite(y[rows]) for y in ys_all])
        groups: dict[bytes, list[int]] = {}
        for j in range(len(outcomes)):
            groups.setdefault(ok[:, j].tobytes(), []).append(j)
        for mask_bytes, js in groups.items():
            sub = rows[np.frombuffer(mask_bytes, dtype=bool)]
            if len(sub) < MIN_N:
                continue
            lab = lab_all[sub]
            starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
            counts = np.diff(np.r_[starts, len(lab)])
            closed = bool((counts == class_size[lab[starts]]).all())
            cells.append(
                Cell(
                    key=key,
                    outcomes=[outcomes[j] for j in js],
                    idx=sid_all[sub],
                    class_starts=starts,
                    memo_rank=RankIndex.of(memo_all[sub]),
                    loss_rank=RankIndex.of(loss_all[sub]),
                    y_rank=[RankIndex.of(ys_all[j][sub]) for j in js],
                    closed=closed,
                    pool=None if closed else np.concatenate([universe.strata[c] for c in lab[starts]]),
                )
            )
    return cells


def _cell_draws(cell: Cell, counts: np.ndarray) -> np.ndarray:
    """(b, n_outcomes, 2) statistics of ``cell`` under the draws ``counts`` (b, S; multiplicities
    per universe sample): ``rank_kernels.cell_sums``, then ``statistics_from_sums``."""
    ranks = [cell.memo_rank, cell.loss_rank, *cell.y_rank]
    b, k, c = len(counts), len(ranks), len(cell.class_starts)
    sums, class_sums = np.zeros((b, k, k)), np.empty((b, k, c))
    w_class, n_w = np.empty((b, c)), np.empty(b)
    rank_kernels.cell_sums(
        counts,
        cell.idx.astype(np.uint32),
        np.stack([r.order for r in ranks]),
        np.stack([r.start for r in ranks]),
        cell.class_starts,
        sums,
        class_sums,
        w_class,
        n_w,
    )
    return statistics_from_sums(sums, class_sums, w_class, n_w)


def _cell_batch(cell: Cell, w: np.ndarray, memo_ranks: np.ndarray | None = None) -> np.ndarray:
    """(b, n_outcomes, 2) statistics of ``cell`` under multiplicities ``w`` (n, b) by the matrix
    formulation (``cell_statistics``, the reference); ``memo_ranks`` (n, b) overrides the memo
    ranks (permutation null, unit weights)."""
    w = np.asarray(w, dtype=np.float64).T  # (b, n)
    ranks = [cell.memo_rank, cell.loss_rank, *cell.y_rank]
    q = np.empty((w.shape[0], len(ranks), w.shape[1]))
    for v, ri in enumerate(ranks):
        q[:, v] = ri.doubled(w) if v or memo_ranks is None else 2 * np.asarray(memo_ranks, np.float64).T - 1
    return cell_statistics(q, w, cell.class_starts)


@dataclass
class NullFixed:
    """What a permutation of memo leaves unchanged in a cell (unit weights): the centred ranks of
    the J outcomes and loss_t (``y``, (n, J + 1), loss last), the class sizes, their class sums and
    S_yy, T_ll, T_yy, T_yl (module docstring). All sums of half-integers below 2^51: exact."""

    y: np.ndarray
    wc: np.ndarray
    y_class: np.ndarray
    syy: np.ndarray
    tll: float
    tyy: np.ndarray
    tyl: np.ndarray

    @classmethod
    def of(cls, cell: Cell) -> NullFixed:
        n = len(cell.idx)
        one = np.ones((n, 1))
        y = np.column_stack([r.ranks(one)[:, 0] for r in (*cell.y_rank, cell.loss_rank)]) - (n + 1) / 2
        wc = np.diff(np.r_[cell.class_starts, n]).astype(float)
        y_class = np.add.reduceat(y, cell.class_starts, axis=0)  # (C, J + 1)
        s = np.einsum("ij,ij->j", y, y)
        t = s - np.sum(y_class**2 / wc[:, None], axis=0)
        tyl = y[:, :-1].T @ y[:, -1] - (y_class[:, -1] / wc) @ y_class[:, :-1]
        return cls(y, wc, y_class, s[:-1], float(t[-1]), t[:-1], tyl)


def memo_moments(xr: np.ndarray, cell: Cell, fixed: NullFixed) -> tuple:
    """S_xx, T_xx (p,) and the class means (p, C) of the centred memo ranks of permutations ``xr`` (p, n)."""
    xc = xr - (len(cell.idx) + 1) / 2
    sums = np.add.reduceat(xc, cell.class_starts, axis=1)  # (p, C)
    sxx = np.einsum("ij,ij->i", xc, xc)
    return sxx, sxx - np.sum(sums**2 / fixed.wc, axis=1), sums / fixed.wc


def _null_stats(cell: Cell, xr: np.ndarray, fixed: NullFixed, memo: tuple | None = None) -> np.ndarray:
    """(p, n_outcomes, 2) statistics of a cell with unit weights and permuted memo ranks ``xr``
    (p, n): the outcome and loss ranks (``fixed``) do not change under a permutation of memo, so
    S_xy and S_xl of every permutation are one matrix product (xr' y = centred xr' y: the columns
    of y sum to 0; exact). S_xx, T_xx and the memo class means (``memo_moments``) change when the
    cell does not hold whole classes; in a closed cell they do not (``memo``: computed once)."""
    sxx, txx, x_class = memo_moments(xr, cell, fixed) if memo is None else memo
    prod = xr @ fixed.y  # (p, J + 1)
    within = x_class @ fixed.y_class  # (p, J + 1) or (J + 1,): sum_c class mean x class sum
    sxy, txy = prod[:, :-1], prod[:, :-1] - within[..., :-1]
    txl = prod[:, -1] - within[..., -1]
    tll, tyy, tyl = fixed.tll, fixed.tyy, fixed.tyl
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = sxy / np.sqrt(np.multiply.outer(sxx, fixed.syy))
        pxx = txx - txl**2 / tll
        pyy = tyy - tyl**2 / tll
        pxy = txy - txl[:, None] * tyl[None, :] / tll
        partial = pxy / np.sqrt(np.multiply.outer(pxx, pyy))
    return np.clip(np.stack([raw, partial], axis=2), -1, 1)


def _null_general(cell: Cell, static: np.ndarray, perm_rows: np.ndarray, fixed: NullFixed) -> np.ndarray:
    """(p, n_outcomes, 2) null statistics of a cell that is not closed, for permutation targets
    ``perm_rows`` (p, n; universe indices): the memo the cell's rows take is a subset of the memo of
    the cell's classes (``pool``), so its within-cell ranks are weighted ranks over the pool with
    weight 1 on the samples taken and 0 elsewhere: one sort of the pool, none per permutation."""
    pool = cell.pool[np.isfinite(static[cell.pool])]
    at = np.full(len(static), len(pool))
    at[pool] = np.arange(len(pool))
    taken = at[perm_rows].astype(np.uint32)  # (p, n) position in the pool
    if cell.pool_rank is None:
        cell.pool_rank = RankIndex.of(static[pool])
    xr = np.empty(taken.shape)
    rank_kernels.subset_ranks(cell.pool_rank.order, cell.pool_rank.start, taken, xr)
    return _null_stats(cell, xr, fixed)


def _cell_null(cell: Cell, perm: np.ndarray, static: np.ndarray) -> np.ndarray:
    """(p, n_outcomes, 2) null statistics of ``cell`` under within-class permutations ``perm``
    (p, S; universe indices), in chunks of ``NULL_ELEMENTS`` // n permutations. In a closed cell the
    rows' memo ranks are permuted within class, so S_xx and the class sums are those of the
    identity; otherwise ``_null_general``."""
    fixed = NullFixed.of(cell)
    if cell.closed:
        rank_of = np.zeros(len(static))
        rank_of[cell.idx] = cell.memo_rank.ranks(np.ones((len(cell.idx), 1)))[:, 0]
        sxx, txx, means = memo_moments(rank_of[cell.idx][None], cell, fixed)
    step = max(1, NULL_ELEMENTS // len(cell.idx))
    out = []
    for i in range(0, len(perm), step):
        pp = perm[i : i + step][:, cell.idx]  # (p, n) universe index of the memo each row takes
        if cell.closed:
            out.append(_null_stats(cell, rank_of[pp], fixed, (sxx[0], txx[0], means[0])))
        else:
            out.append(_null_general(cell, static, pp, fixed))
    return np.concatenate(out)


@dataclass
class Resampled:
    """Cell estimates: ``rows`` (key columns, outcome, n), ``estimate`` (R, 2), ``boot`` (B, R, 2),
    ``null`` (P, R, 2); axis -1 is the estimator (raw, partial); ``sample_idx`` universe indices per row.
    NaN replicates (degenerate resamples of tiny cells) are replaced by the cell's estimate."""

    rows: pd.DataFrame
    estimate: np.ndarray
    boot: np.ndarray
    null: np.ndarray
    sample_idx: list
    universe: Universe
    timing: dict = field(default_factory=dict)  # wall and CPU seconds of the bootstrap and null draws


def resample(
    old: pd.DataFrame,
    keys: Sequence[str],
    outcomes: Sequence[str],
    n_boot: int,
    n_null: int,
    rng: np.random.Generator,
    memo: str = "memo",
    threads: int = 1,
) -> Resampled:
    """Estimates, bootstrap replicates and permutation-null replicates of every cell of ``old``.

    Bootstrap: ``n_boot`` class-stratified sample-id draws (``stratified_counts``), each applied to
    every cell. Null: ``n_null`` within-class permutations of memo across samples
    (``within_class_permutations``), each shared by every cell; ranks of the permuted memo in
    the cell (a re-indexing of the memo ranks when the cell holds whole classes). Cells are
    evaluated on ``threads`` threads (numpy releases the GIL; results do not depend on it).
    """
    universe = Universe.of(old)
    cells = build_cells(old, universe, keys, outcomes, memo)
    meta = [{**c.key, "outcome": o, "n": len(c.idx)} for c in cells for o in c.outcomes]
    n_rows = len(meta)
    est = np.empty((n_rows, 2))
    boot = np.empty((n_boot, n_rows, 2))
    null = np.empty((n_null, n_rows, 2))
    spans, r = [], 0
    for c in cells:
        spans.append(slice(r, r + len(c.outcomes)))
        r += len(c.outcomes)
    for c, sl in zip(cells, spans):
        est[sl] = _cell_draws(c, np.ones((1, len(universe.sample_id)), dtype=np.uint16))[0]
    batch = max(1, COUNT_ELEMENTS // len(universe.sample_id))
    in_cells = np.zeros(len(universe.sample_id), dtype=bool)
    for c in cells:
        in_cells[c.idx] = True
    static = np.full(len(universe.sample_id), np.nan)  # memo per sample (static), of the samples in cells
    static[universe.index(old["sample_id"].to_numpy())] = pd.to_numeric(old[memo], errors="coerce").to_numpy(float)
    static[~in_cells] = np.nan
    timing = {}
    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        clock = time.perf_counter(), time.process_time()
        for b0 in range(0, n_boot, batch):
            counts = stratified_counts(universe, min(batch, n_boot - b0), rng)  # (b, S)

            def one(c_sl, counts=counts, b0=b0):
                c, sl = c_sl
                boot[b0 : b0 + len(counts), sl] = _cell_draws(c, counts)

            list(pool.map(one, zip(cells, spans)))
        timing["boot_wall"], timing["boot_cpu"] = time.perf_counter() - clock[0], time.process_time() - clock[1]
        clock = time.perf_counter(), time.process_time()
        for p0 in range(0, n_null, batch):
            perm = within_class_permutations(universe, min(batch, n_null - p0), rng)

            def one_null(c_sl, perm=perm, p0=p0):
                c, sl = c_sl
                null[p0 : p0 + len(perm), sl] = _cell_null(c, perm, static)

            list(pool.map(one_null, zip(cells, spans)))
        timing["null_wall"], timing["null_cpu"] = time.perf_counter() - clock[0], time.process_time() - clock[1]
    log.info(
        "resample: %d cells, %d bootstrap draws in %.1f s (%.1f CPU s), %d null draws in %.1f s (%.1f CPU s)",
        len(cells),
        n_boot,
        timing["boot_wall"],
        timing["boot_cpu"],
        n_null,
        timing["null_wall"],
        timing["null_cpu"],
    )
    # a degenerate resample of a tiny cell (constant ranks) gives NaN: count it as the estimate
    boot = np.where(np.isfinite(boot), boot, est[None])
    null = np.where(np.isfinite(null), null, est[None])
    sample_idx = [c.idx for c, sl in zip(cells, spans) for _ in range(sl.stop - sl.start)]
    return Resampled(pd.DataFrame(meta), est, boot, null, sample_idx, universe, timing)
