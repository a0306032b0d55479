"""Merging calibration histograms collected separately (share groups, ranks under torchrun)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .amax_search import _GRID_TOL, HistLike, _check_hist, _to_numpy

__all__ = ["merge_histograms"]


def _rebin(counts: np.ndarray, edges: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Re-bin ``counts`` onto ``target`` edges (which must cover ``edges``), preserving the total.

    The first source bin is treated as a point mass at its left edge: histograms of ``|x|`` usually hold
    the exact zeros there (post-ReLU, padding), which must not leak into the next bins. Other bins are
    assumed uniform inside. Integer counts stay integers: the cumulative count is rounded at each target
    edge, so a sparse tail keeps whole samples instead of being smeared into fractions.
    """
    if edges[-1] <= edges[0]:  # zero-width histogram: everything is a point mass at edges[0]
        cdf_at = np.where(target > edges[0], counts.sum(), 0.0)
    else:
        rest = np.concatenate(([0.0], np.cumsum(counts[1:])))
        cdf_at = np.where(target > edges[0], counts[0], 0.0) + np.interp(target, edges[1:], rest)
    cdf_at[-1] = counts.sum()  # target covers the source: nothing may fall off the end by round-off
    if np.all(counts == np.round(counts)):
        cdf_at = np.round(cdf_at)
    return np.diff(cdf_at)


def merge_histograms(
    histograms: Sequence[tuple[HistLike | None, HistLike | None]],
) -> tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]:
    """Merge ``(hist, bin_edges)`` pairs with different ranges into one histogram.

    Mirrors how ``HistogramCalibrator.collect()`` grows its histogram: the result keeps the first
    (non-degenerate) histogram's bins unchanged and appends bins of the same width until the widest
    range is covered (and prepends some if another histogram starts lower). Histograms whose edges lie on
    that grid (same width and origin, e.g. all seeded with :func:`seed_histogram`) are added bin by bin,
    which is exact. Others are re-binned (total and integer counts preserved, first bin kept as a point
    mass at its left edge, other bins assumed uniform inside): the raw samples are no longer available, so
    the result only approximates a calibrator that collected A's data and then B's. Pairs with
    ``hist is None`` (nothing collected, e.g. an idle rank) are skipped.

    Counts are returned as float64, edges in the first histogram's dtype; torch tensors on the first
    histogram's device if it is a tensor, else NumPy arrays.
    """
    present = [(h, e) for h, e in histograms if h is not None]
    if not present:
        raise ValueError("merge_histograms: no histogram has collected any data")
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for k, (hist, edges) in enumerate(present):
        try:
            parts.append(_check_hist(hist, edges, allow_zero=True))
        except ValueError as exc:
            raise ValueError(f"merge_histograms: histogram {k}: {exc}") from exc

    first_hist, first_edges = present[0]
    edge_dtype = _to_numpy(first_edges).dtype
    base_idx = next((k for k, (_, e) in enumerate(parts) if e[-1] > e[0]), None)
    if base_idx is None:  # every histogram is a point mass (zero-width range)
        out_edges = parts[0][1].astype(np.float64)
        out_counts = np.zeros(parts[0][0].size)
        out_counts[0] = sum(c.sum() for c, _ in parts)
    else:
        be = parts[base_idx][1].astype(np.float64)
        width = be[1] - be[0]
        lo = min(float(e[0]) for _, e in parts)
        hi = max(float(e[-1]) for _, e in parts)
        # Whole bins to add below/above. A range end that is on the grid up to float32 round-off (as after
        # collect() growth) must not add a bin, hence the slack.
        n_below = max(0, math.ceil((be[0] - lo) / width - _GRID_TOL))
        above = be[-1] + width * np.arange(1, max(0, math.ceil((hi - be[-1]) / width - _GRID_TOL)) + 1)
        out_edges = np.concatenate((be[0] - width * np.arange(n_below, 0, -1), be, above))
        out_counts = np.zeros(out_edges.size - 1)
        for k, (counts, e) in enumerate(parts):
            ef = e.astype(np.float64)
            pos = (ef - out_edges[0]) / width
            on_grid = np.round(pos)
            if k == base_idx:
                out_counts[n_below : n_below + counts.size] += counts
            elif (
                ef[-1] > ef[0] and np.all(np.abs(pos - on_grid) < _GRID_TOL) and np.all(np.diff(on_grid) == 1)
            ):
                off = int(on_grid[0])
                out_counts[off : off + counts.size] += counts
            else:
                out_counts += _rebin(counts, ef, out_edges)
        np.maximum(out_counts, 0.0, out=out_counts)  # interpolation round-off
    out_edges = out_edges.astype(edge_dtype)
    if isinstance(first_hist, torch.Tensor):
        device = first_hist.device
        return torch.from_numpy(out_counts).to(device), torch.from_numpy(out_edges).to(device)
    return out_counts, out_edges
