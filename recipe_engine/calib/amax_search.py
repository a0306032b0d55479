"""Vectorised amax search over calibration histograms.

Pure functions over ``(hist, bin_edges)`` arrays (no quantizer or calibrator object: a backend's
statistics reach them through :mod:`recipe_engine.calib.methods`; merging histograms is
:mod:`recipe_engine.calib.merge`). They reproduce the amax chosen by pytorch-quantization 2.1.3's
``HistogramCalibrator.compute_amax`` (``calib/histogram.py``: ``_compute_amax_entropy``,
``_compute_amax_mse``, ``_compute_amax_percentile``) without its per-candidate Python loops, and
without the ``.cuda()`` call that makes upstream's MSE path crash on CPU-only machines.

Upstream semantics reproduced here (``n`` = number of histogram bins):

* **entropy** -- ``bins[0]`` is replaced by ``bins[1]``. Candidates are ``i = start_bin, start_bin +
  stride, ... <= n``. The reference distribution ``p`` is ``bins[:i]`` with the clipped tail
  ``sum(bins[i:])`` added to its last element. Bins ``j < i`` are split into ``nq = 2**(num_bits - 1 +
  unsigned)`` groups ``g = floor(j * nq / i)``; the candidate distribution ``q`` gives every *non-empty*
  bin of a group the mean count of the group's non-empty bins (empty bins stay 0). Both are normalised
  and ``KL(p || q)`` is minimised; ties go to the *largest* ``i``; ``amax = bin_edges[i]``. Upstream
  quirks kept: a candidate whose first ``i`` bins are all empty has a NaN divergence and NumPy's
  ``argmin`` picks it (the largest such ``i``); a candidate whose last bin is empty while data lies
  beyond it has an infinite divergence.
* **mse** -- candidates are bin centres ``c[i]``, ``i = start_bin, start_bin + stride, ... < n``.
  Every centre is fake-quantised exactly as ``fake_tensor_quant`` does in float32 (``scale =
  max_bound / amax``, round half to even, clamp to ``max_bound = 2**(num_bits - 1 + unsigned) - 1``,
  divide by ``scale``; ``amax <= 2**-24`` quantises everything to 0) and the count-weighted squared
  error is minimised; ties go to the *smallest* ``i``; ``amax = c[i]``.
* **percentile** -- ``amax = bin_edges[searchsorted(cumsum(hist / total), percentile / 100)]``
  (note: the *left* edge of the bin where the CDF crosses the percentile, as upstream does).

How the search is vectorised:

* entropy: the KL divergence of every candidate is evaluated in closed form from prefix sums
  (``sum b``, ``sum [b > 0]``, ``sum b log b``) over the ``nq`` contiguous groups, i.e. in
  ``O(candidates * nq)`` instead of ``O(candidates * n)`` Python steps. Candidates within a tiny
  tolerance of the minimum are then re-evaluated with upstream's own element-wise construction and
  ``scipy.stats.entropy`` so that near-ties and exact ties (e.g. ``KL == 0``) resolve as upstream's do.
* mse: :mod:`.mse_search` -- the bins of one quantisation level form a contiguous run, so a candidate's
  error is a sum over at most ``2**num_bits`` runs from prefix sums, and a lower bound (the lowest levels'
  runs plus the clipped tail) excludes most candidates after a few runs; the candidates within rounding
  tolerance of the minimum are re-evaluated bin by bin (``q - c`` in float32 as upstream, summed in float64;
  upstream sums in float32, so in rare near-ties the chosen candidate can differ from upstream's float32,
  device-dependent choice). Runs on the CPU for a histogram on any device (histograms are small).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import entropy as scipy_entropy

from .mse_search import mse_best

__all__ = [
    "EmptyCalibratorError",
    "HistLike",
    "entropy_amax",
    "mse_amax",
    "percentile_amax",
]

HistLike = torch.Tensor | np.ndarray | Sequence[float]
"""A 1-D histogram counts or bin-edges array (torch tensor on any device, NumPy array or sequence)."""

METHODS = ("entropy", "mse", "percentile")


class EmptyCalibratorError(ValueError):
    """The calibrator / histogram holds no data to compute an amax from."""


# Absolute/relative slack used to short-list entropy candidates for the exact re-evaluation.
_KL_TOL = 1e-9
# Elements (candidates x groups) of one block of the closed-form KL evaluation.
_KL_BLOCK = 1 << 14
# Edges within this fraction of a bin of the merge grid count as on it (float32 edges drift ~k * 2**-24 bins).
_GRID_TOL = 1e-2


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------
def _to_numpy(x: HistLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _device_of(x: HistLike) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def _check_hist(
    hist: HistLike, bin_edges: HistLike, allow_zero: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a histogram; return (counts as float64, edges in their own dtype) NumPy arrays."""
    if hist is None or bin_edges is None:
        raise EmptyCalibratorError("histogram is empty: no data has been collected (hist/bin_edges is None)")
    counts = _to_numpy(hist)
    edges = _to_numpy(bin_edges)
    if counts.ndim != 1 or edges.ndim != 1:
        raise ValueError(f"hist and bin_edges must be 1-D, got shapes {counts.shape} and {edges.shape}")
    if counts.size == 0:
        raise ValueError("histogram is empty: it has no bins")
    if edges.size != counts.size + 1:
        raise ValueError(f"bin_edges must have len(hist) + 1 = {counts.size + 1} entries, got {edges.size}")
    counts = counts.astype(np.float64)
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("histogram counts must be finite and non-negative")
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) < 0):
        raise ValueError("bin_edges must be finite and non-decreasing")
    if not allow_zero and not counts.any():
        raise EmptyCalibratorError("histogram is empty: all counts are zero")
    return counts, edges


def _check_search(n_candidates_end: int, start_bin: int, stride: int, what: str) -> None:
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start_bin < 0:
        raise ValueError(f"start_bin must be >= 0, got {start_bin}")
    if start_bin > n_candidates_end:
        raise ValueError(
            f"{what}: start_bin={start_bin} leaves no candidate amax for a histogram with "
            f"{n_candidates_end if what == 'entropy' else n_candidates_end + 1} bins; lower start_bin"
        )


def _num_levels(num_bits: int, unsigned: bool) -> int:
    if num_bits < 1:
        raise ValueError(f"num_bits must be >= 1, got {num_bits}")
    return 1 << (num_bits - 1 + int(unsigned))


def _scalar(value: float, device: torch.device) -> torch.Tensor:
    # Upstream returns ``torch.tensor(edge.item())``: a 0-dim float32 tensor.
    return torch.tensor(float(value), dtype=torch.float32, device=device)


# --------------------------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------------------------
def _kl_closed_form(b: np.ndarray, cand: np.ndarray, nq: int) -> np.ndarray:
    """KL(p || q) of every candidate from prefix sums; float64, +inf/NaN like upstream. Candidates go in
    blocks of ``_KL_BLOCK`` elements (candidates x groups), so that the temporaries stay in cache."""
    n = b.size
    nz = b > 0
    cum_b = np.concatenate(([0.0], np.cumsum(b)))
    cum_z = np.concatenate(([0], np.cumsum(nz)))
    blogb = np.zeros_like(b)
    blogb[nz] = b[nz] * np.log(b[nz])
    cum_l = np.concatenate(([0.0], np.cumsum(blogb)))
    tail = np.concatenate((np.cumsum(b[::-1])[::-1], [0.0]))  # tail[i] = sum(b[i:])
    step = max(1, _KL_BLOCK // (nq + 1))
    prefix = (b, cum_b, cum_z, cum_l, tail, cum_b[n])
    return np.concatenate([_kl_block(prefix, cand[a:a + step], nq) for a in range(0, cand.size, step)])


def _kl_block(prefix: tuple, cand: np.ndarray, nq: int) -> np.ndarray:
    b, cum_b, cum_z, cum_l, tail, total = prefix
    i = cand.astype(np.int64)[:, None]  # (C, 1)
    g = np.arange(nq + 1, dtype=np.int64)[None, :]  # group boundaries 0..nq
    bounds = -((-g * i) // nq)  # ceil(g * i / nq): first bin of group g
    s = np.diff(cum_b[bounds], axis=1)  # (C, nq) group sums
    z = np.diff(cum_z[bounds], axis=1)  # (C, nq) non-empty bins per group
    filled = z > 0
    mean = np.where(filled, s / np.where(filled, z, 1), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_log_mean = np.where(filled & (s > 0), s * np.log(mean), 0.0).sum(axis=1)

        ci = cand.astype(np.int64)
        q_sum = cum_b[ci]  # sum(q) == sum(b[:i])
        log_ratio = np.log(q_sum / total)  # log(Q / P)
        kl = (cum_l[ci] - s_log_mean + q_sum * log_ratio) / total

        # Last reference bin also holds the clipped tail: replace its term.
        t = tail[ci]
        last_b = b[ci - 1]
        last_mean = mean[np.arange(ci.size), (ci - 1) * nq // ci]
        log_q = np.log(last_mean) - np.log(q_sum)  # log of normalised q at bin i-1
        with_tail = last_b + t
        term_new = with_tail / total * (np.log(with_tail / total) - log_q)
        term_old = np.where(last_b > 0, last_b / total * (np.log(last_b / total) - log_q), 0.0)
        fix = np.where(t > 0, term_new - term_old, 0.0)
        kl = kl + fix
    kl = np.where((t > 0) & (last_b == 0), np.inf, kl)
    kl = np.where(q_sum == 0, np.nan, kl)
    return kl


def _kl_exact(b: np.ndarray, cand: np.ndarray, nq: int) -> np.ndarray:
    """KL(p || q) of a few candidates, built and evaluated exactly as upstream does (same float ops and
    summation order), so that ties are broken the same way. O(i) per candidate."""
    out = np.empty(cand.size, dtype=np.float64)
    nz = b > 0
    for k, i in enumerate(cand.tolist()):
        group = np.arange(i, dtype=np.int64) * nq // i
        member = nz[:i]
        sums = np.bincount(group[member], weights=b[:i][member], minlength=nq)  # sequential, like upstream
        counts = np.bincount(group[member], minlength=nq)
        q = np.zeros(i)
        q[member] = sums[group[member]] / counts[group[member]]
        p = b[:i].copy()
        p[-1] += np.sum(b[i:])
        out[k] = scipy_entropy(p, q)
    return out


def entropy_amax(
    hist: HistLike,
    bin_edges: HistLike,
    num_bits: int = 8,
    unsigned: bool = False,
    stride: int = 1,
    start_bin: int = 128,
) -> torch.Tensor:
    """Amax minimising the KL divergence between the histogram and its quantised version.

    Same result as pytorch-quantization's ``compute_amax("entropy")``; returns a 0-dim float32 tensor
    on ``hist``'s device (CPU for NumPy input). Raises ``ValueError`` for an empty histogram or when
    ``start_bin`` leaves no candidate.
    """
    counts, edges = _check_hist(hist, bin_edges)
    n = counts.size
    nq = _num_levels(num_bits, unsigned)
    _check_search(n, start_bin, stride, "entropy")
    if n < 2:
        raise ValueError("entropy calibration needs a histogram with at least 2 bins")
    b = counts.copy()
    b[0] = b[1]  # upstream drops the (often zero-dominated) first bin this way
    cand = np.arange(start_bin, n + 1, stride, dtype=np.int64)
    cand = cand[cand > 0]  # i == 0 is an empty distribution (only reachable with start_bin=0)
    if cand.size == 0:
        raise ValueError("entropy: no candidate amax; increase start_bin")

    kl = _kl_closed_form(b, cand, nq)
    nan = np.isnan(kl)
    if nan.any():
        best = cand[np.flatnonzero(nan)[-1]]  # np.argmin on the reversed list returns the first NaN
    elif np.isinf(kl).all():
        best = cand[-1]
    else:
        kmin = kl.min()
        short = np.flatnonzero(kl <= kmin + _KL_TOL * (1.0 + abs(kmin)))
        exact = _kl_exact(b, cand[short], nq)
        best = cand[short[exact.size - 1 - np.argmin(exact[::-1])]]  # ties -> largest candidate
    return _scalar(edges[best].item(), _device_of(hist))


# --------------------------------------------------------------------------------------------------------
# mse
# --------------------------------------------------------------------------------------------------------
def mse_amax(
    hist: HistLike,
    bin_edges: HistLike,
    num_bits: int = 8,
    unsigned: bool = False,
    stride: int = 1,
    start_bin: int = 128,
) -> torch.Tensor:
    """Bin centre minimising the count-weighted MSE of fake quantisation (upstream ``"mse"``).

    Searches on the CPU (never calls ``.cuda()``); returns a 0-dim float32 tensor on ``hist``'s device
    (CPU for NumPy input).
    """
    counts_np, edges_np = _check_hist(hist, bin_edges)
    n = counts_np.size
    max_bound = float(_num_levels(num_bits, unsigned) - 1)
    if max_bound >= 2**21:
        raise ValueError(f"num_bits={num_bits} is too large for the float32 MSE search (max 22)")
    _check_search(n - 1, start_bin, stride, "mse")
    device = _device_of(hist)
    if isinstance(bin_edges, torch.Tensor):
        edges = bin_edges.detach().to(device="cpu", dtype=torch.float32)
    else:
        edges = torch.from_numpy(np.ascontiguousarray(edges_np)).to(dtype=torch.float32)
    centers = ((edges[1:] + edges[:-1]) / 2).numpy()  # float32, exactly as upstream
    cand = np.arange(start_bin, n, stride)
    if centers[cand[0]] < 0:
        raise ValueError(f"mse: candidate amax {centers[cand[0]]:g} (bin {start_bin}) is negative; a histogram of "
                         "|x| starts at 0 (raise start_bin past the negative bins)")
    best = mse_best(counts_np, centers, cand, max_bound, 0.0 if unsigned else -max_bound)
    return _scalar(centers[cand[best]].item(), device)


# --------------------------------------------------------------------------------------------------------
# percentile
# --------------------------------------------------------------------------------------------------------
def percentile_amax(hist: HistLike, bin_edges: HistLike, percentile: float = 99.99) -> torch.Tensor:
    """Left edge of the bin where the CDF reaches ``percentile`` % (upstream ``"percentile"``)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    counts, edges = _check_hist(hist, bin_edges)
    cdf = np.cumsum(counts / counts.sum())
    idx = int(np.searchsorted(cdf, percentile / 100))
    return _scalar(edges[idx].item(), _device_of(hist))
