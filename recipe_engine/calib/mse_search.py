"""The MSE amax search in ``O(candidates * levels)`` (at most) instead of ``O(candidates * bins)``.

What is searched (upstream's ``_compute_amax_mse``): for every candidate ``amax = c[i]`` (a bin centre),
every bin centre is fake-quantised in float32 -- level ``k = clamp(rint(c * scale), lo, hi)`` with ``scale
= hi / amax``, value ``v_k = k / scale`` -- and ``E(i) = sum_j w_j (v_k(j) - c_j)^2`` is minimised (first
minimum). :func:`dense_errors` evaluates that bin by bin, ``O(bins)`` per candidate; it is the reference
and decides the final choice.

Why it can be cheaper: ``c * scale`` is monotone in the bin index (float32 products, ``rint`` and the clamp
are monotone), so the bins of one level form a contiguous *run* ``[B_k, B_k+1)``, at most ``hi - lo + 1``
runs. With prefix sums ``P0, P1, P2`` of ``w, w c, w c^2`` a run costs ``O(1)``::

    E_run = (P2[b'] - P2[b]) - 2 v_k (P1[b'] - P1[b]) + v_k^2 (P0[b'] - P0[b])

The run boundaries ``B_k`` (first bin whose level is ``>= k``) are exact: on a uniform grid the position
``((k - 1/2) / scale - c[0]) / h`` gives ``ceil`` of it directly whenever it lies farther than the grid's
measured deviation plus the float32 rounding of the product (``delta`` bins) from an integer; the few
positions closer than that, and every position on a non-uniform grid (``searchsorted`` start), are moved
bin by bin with the exact float32 level test ``rint(c[j] * scale) >= k``.

Fewer candidates (branch and bound): every run's error is ``>= 0``, so the runs of the lowest ``m``
levels plus the top (clipped) run are a lower bound of ``E``. A coarse set of candidates is evaluated in
full (upper bound ``U``); then the bound is deepened, ``m = 4, 8, 16, 32, 64``, for the candidates it does not
exclude yet (each deepening adds runs to the partial sum, nothing is recomputed), and only the rest are
finished. Calibration histograms have their mass near 0, so for a large ``amax`` the first levels already
hold almost all of the error and most candidates stop after a few runs.

Exactness: prefix sums are accumulated in extended precision (where NumPy has it), then float64; ``tol_abs``
bounds the rounding of a run-sum error and ``_REL_TOL`` covers the float32 rounding of ``q - c`` in the reference.
Every candidate whose run-sum error is within those tolerances of the minimum (and none that the bound
excludes could be) is re-evaluated with :func:`dense_errors`, and its first minimum is returned: the same
candidate the dense search over all candidates picks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dense_errors", "mse_best"]

# fake_tensor_quant treats amax <= 2**-24 as zero (everything quantises to 0).
ZERO_AMAX = 1.0 / (1 << 24)
_EPS32 = float(np.finfo(np.float32).eps)
_EPS64 = float(np.finfo(np.float64).eps)
# Relative slack between the run sums (exact-real errors, rounded in float64) and the reference (float32
# ``q - c``, rounded once: <= 2**-23 relative per bin; 2.4e-7 on an error) -- with a factor 4 margin.
_REL_TOL = 1e-6
# Deepening schedule of the lower bound (levels summed from the bottom) before finishing a candidate.
_DEPTHS = (4, 8, 16, 32, 64)
# Candidates evaluated in full first (evenly spaced) to get the upper bound.
_COARSE = 48
# Element budget of one (candidates x levels) block: cache-resident numpy temporaries.
_BLOCK = 1 << 15
# A grid whose centres deviate from a straight line by more than this (in bins) takes searchsorted.
_MAX_DEVIATION = 0.25


class _Runs:
    """Prefix sums and the grid of one histogram; run errors of candidates (rows) over level ranges."""

    def __init__(self, counts: np.ndarray, centers: np.ndarray, hi: float, lo: float) -> None:
        self.n = n = centers.size
        self.c32 = centers.astype(np.float32)
        c = self.c32.astype(np.float64)
        w = counts.astype(np.float64)
        ext = np.longdouble
        cw = w.astype(ext) * c.astype(ext)
        self.p0 = np.concatenate(([0.0], np.cumsum(w.astype(ext)).astype(np.float64)))
        self.p1 = np.concatenate(([0.0], np.cumsum(cw).astype(np.float64)))
        self.p2 = np.concatenate(([0.0], np.cumsum(cw * c.astype(ext)).astype(np.float64)))
        self.abs1 = float(np.sum(w * np.abs(c)))
        self.hi, self.lo = hi, lo
        # Levels reached: nothing below 0 without a negative centre.
        self.k_low = int(lo) if c[0] < 0 else 0
        self.uniform = False
        if n >= 2 and c[-1] > c[0]:
            self.c0, self.h = float(c[0]), float(c[-1] - c[0]) / (n - 1)
            deviation = float(np.max(np.abs(c - (self.c0 + np.arange(n) * self.h)))) / self.h
            # |position error| <= grid deviation + the float32 rounding of c * scale (<= eps32 |c| / h bins)
            self.delta = 2.0 * (deviation + (n + abs(self.c0) / self.h + 2) * _EPS32) + 1e-9
            self.uniform = self.delta < _MAX_DEVIATION
        self.c64 = c

    def _level_ge(self, j: np.ndarray, scale: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Exact float32 test ``rint(c[j] * scale) >= k`` (``lo < k <= hi``, so the clamp cannot matter)."""
        return np.rint(self.c32[j] * scale) >= k

    def boundaries(self, scale: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """``B[r, t]`` = first bin whose level under ``scale[r]`` is ``>= ks[t]`` (``n`` if none)."""
        n = self.n
        inv = 1.0 / scale.astype(np.float64)
        thresholds = (ks.astype(np.float64) - 0.5)[None, :] * inv[:, None]
        if self.uniform:
            pos = (thresholds - self.c0) / self.h
            b = np.ceil(pos)
            doubt = np.abs(b - pos - 0.5) > 0.5 - self.delta  # within delta of an integer
            np.clip(b, 0, n, out=b)
            bounds = b.astype(np.intp)
            rows, cols = np.nonzero(doubt)
        else:
            bounds = np.searchsorted(self.c64, thresholds.ravel()).reshape(thresholds.shape).astype(np.intp)
            rows, cols = np.nonzero(np.ones(bounds.shape, dtype=bool))
        if rows.size:
            bounds[rows, cols] = self._fix(bounds[rows, cols], scale[rows], ks[cols].astype(np.float32))
        return bounds

    def _fix(self, b: np.ndarray, scale: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Move each boundary guess bin by bin to the exact first bin with level >= k (levels are monotone)."""
        b = b.copy()
        todo = np.arange(b.size)
        while todo.size:  # down while the bin before is already at level >= k
            bt = b[todo]
            move = bt > 0
            move[move] = self._level_ge(bt[move] - 1, scale[todo[move]], k[todo[move]])
            todo = todo[move]
            b[todo] -= 1
        todo = np.arange(b.size)
        while todo.size:  # up while the bin itself is still below level k
            bt = b[todo]
            move = bt < self.n
            move[move] = ~self._level_ge(bt[move], scale[todo[move]], k[todo[move]])
            todo = todo[move]
            b[todo] += 1
        return b

    def run_errors(self, start: np.ndarray, stop: np.ndarray, value: np.ndarray) -> np.ndarray:
        """``sum_{start <= j < stop} w_j (value - c_j)^2`` from the prefix sums (any shapes, broadcast)."""
        s0 = self.p0[stop] - self.p0[start]
        s1 = self.p1[stop] - self.p1[start]
        s2 = self.p2[stop] - self.p2[start]
        return s2 - 2.0 * value * s1 + value * value * s0

    def values(self, scale: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """``v[r, t] = ks[t] / scale[r]`` in float32 (as fake_tensor_quant divides), as float64."""
        return (ks.astype(np.float32)[None, :] / scale[:, None]).astype(np.float64)


class _Search:
    """Branch and bound over the candidates of one histogram (see the module docstring)."""

    def __init__(self, runs: _Runs, amax: np.ndarray) -> None:
        self.runs = runs
        hi = np.float32(runs.hi)
        self.zero = amax <= ZERO_AMAX
        safe = np.where(self.zero, np.float32(1), amax).astype(np.float32)
        self.scale = (hi / safe).astype(np.float32)  # float32 division, as upstream
        count = amax.size
        n = runs.n
        # Top run (level hi, holds everything clipped): [B_hi, n).
        self.b_top = np.empty(count, dtype=np.intp)
        self.top = np.empty(count)
        self.level = np.full(count, runs.k_low, dtype=np.int64)  # next level to add to the partial sum
        self.b_level = np.zeros(count, dtype=np.intp)  # B at self.level
        self.partial = np.zeros(count)
        for a, b in _blocks(count, 1):
            rows = slice(a, b)
            top = self.runs.boundaries(self.scale[rows], np.array([runs.hi]))[:, 0]
            self.b_top[rows] = top
            v = self.runs.values(self.scale[rows], np.array([runs.hi]))[:, 0]
            self.top[rows] = self.runs.run_errors(top, np.full(b - a, n), v)
        self.top[self.zero] = 0.0
        self.b_top[self.zero] = n
        # Rounding of a run sum: a few float64 ulps of the magnitudes its terms can have, per run.
        a64 = np.where(self.zero, 0.0, amax.astype(np.float64)) * (1 + 1e-6)
        levels = int(runs.hi) - runs.k_low + 1
        total = runs.p2[n] + 2 * a64 * runs.abs1 + a64 * a64 * runs.p0[n]
        cumsum_ulps = n * float(np.finfo(np.longdouble).eps) / _EPS64  # ~n / 2048 (x86), n where float64
        self.tol_abs = 16.0 * (levels + 2 + cumsum_ulps) * _EPS64 * total
        self.done = np.zeros(count, dtype=bool)
        self.error = np.full(count, np.inf)
        # amax ~ 0: every centre quantises to 0.
        self.error[self.zero] = runs.p2[n]
        self.done[self.zero] = True

    def deepen(self, rows: np.ndarray, depth: int | None) -> None:
        """Add the runs of levels up to ``k_low + depth`` (all below hi when None) to ``partial[rows]``."""
        runs = self.runs
        hi = int(runs.hi)
        target = hi if depth is None else min(hi, runs.k_low + depth)
        rows = rows[~self.done[rows]]
        finished = rows
        rows = rows[self.level[rows] < target]
        if rows.size:
            order = np.argsort(self.level[rows], kind="stable")
            rows = rows[order]
            for start_level in np.unique(self.level[rows]):
                group = rows[self.level[rows] == start_level]
                ks = np.arange(int(start_level) + 1, target + 1)  # boundaries B_{level+1} .. B_target
                for a, b in _blocks(group.size, ks.size):
                    self._add_runs(group[a:b], int(start_level), ks, target)
        if depth is None:
            self.done[finished] = True
            self.error[finished] = self.partial[finished] + self.top[finished]

    def _add_runs(self, rows: np.ndarray, start_level: int, ks: np.ndarray, target: int) -> None:
        runs = self.runs
        scale = self.scale[rows]
        b = runs.boundaries(scale, ks[:-1]) if ks.size > 1 else np.empty((rows.size, 0), dtype=np.intp)
        last = self.b_top[rows] if target == int(runs.hi) else runs.boundaries(scale, ks[-1:])[:, 0]
        bounds = np.concatenate((self.b_level[rows, None], b, last[:, None]), axis=1)
        values = runs.values(scale, np.arange(start_level, target))
        errors = runs.run_errors(bounds[:, :-1], bounds[:, 1:], values)
        self.partial[rows] += errors.sum(axis=1)
        self.level[rows] = target
        self.b_level[rows] = last

    def lower_bound(self, rows: np.ndarray) -> np.ndarray:
        return np.where(self.done[rows], self.error[rows], self.partial[rows] + self.top[rows])


def _blocks(rows: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK // max(width, 1))
    return [(a, min(rows, a + step)) for a in range(0, rows, step)]


def _candidate_errors(counts: np.ndarray, centers: np.ndarray, cand: np.ndarray, hi: float, lo: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(run-sum errors, with +inf for candidates the bound excludes; their tolerances; done mask)."""
    runs = _Runs(counts, centers, hi, lo)
    search = _Search(runs, centers[cand].astype(np.float32))
    count = cand.size
    coarse = np.unique(np.linspace(0, count - 1, min(count, _COARSE)).round().astype(np.intp))
    search.deepen(coarse, None)
    alive = np.flatnonzero(~search.done)
    for depth in (*_DEPTHS, None):
        limit = _limit(search.error, search.tol_abs)
        alive = alive[search.lower_bound(alive) - search.tol_abs[alive] <= limit]
        if not alive.size:
            break
        search.deepen(alive, depth)
    return search.error, search.tol_abs, search.done


def _limit(errors: np.ndarray, tol_abs: np.ndarray) -> float:
    """Above this, a candidate's run-sum error minus its tolerance cannot be the reference's minimum: the
    smallest certain upper bound of an exact error, widened by the reference's float32 rounding."""
    return float(np.min(errors + tol_abs)) * (1 + _REL_TOL)


def mse_best(counts: np.ndarray, centers: np.ndarray, cand: np.ndarray, max_bound: float, min_bound: float) -> int:
    """Index into ``cand`` of the first candidate minimising :func:`dense_errors` (see the module docstring)."""
    errors, tol_abs, _ = _candidate_errors(counts, centers, cand, max_bound, min_bound)
    short = np.flatnonzero(errors - tol_abs <= _limit(errors, tol_abs))
    exact = dense_errors(counts, centers, cand[short], max_bound, min_bound)
    return int(short[np.argmin(exact)])


def dense_errors(counts: np.ndarray, centers: np.ndarray, cand: np.ndarray, max_bound: float,
                 min_bound: float) -> np.ndarray:
    """The reference: ``sum_j w_j (q_j - c_j)^2`` bin by bin, ``q - c`` in float32 as upstream, summed in
    float64 (upstream sums in float32). ``O(bins)`` per candidate."""
    nz = counts > 0
    c = centers[nz].astype(np.float32)
    w = counts[nz].astype(np.float64)
    out = np.empty(cand.size)
    hi = np.float32(max_bound)
    for t, amax in enumerate(centers[cand].astype(np.float32).tolist()):
        amax = np.float32(amax)
        if amax <= ZERO_AMAX:
            q = np.zeros_like(c)
        else:
            scale = np.float32(hi / amax)
            q = (np.clip(np.rint(c * scale), min_bound, max_bound).astype(np.float32) / scale).astype(np.float32)
        d = (q - c).astype(np.float64)
        out[t] = float(np.dot(d * d, w))
    return out
