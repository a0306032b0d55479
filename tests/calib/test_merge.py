"""merge_histograms / seed_histogram: shared quantizers and all-reducing histograms across ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_quantization.calib import HistogramCalibrator

from recipe_engine.backends.pytorch_quantization.calibrators import compute_amax, seed_histogram
from recipe_engine.calib.amax_search import entropy_amax, mse_amax, percentile_amax
from recipe_engine.calib.merge import merge_histograms

METHODS = {"entropy": entropy_amax, "mse": mse_amax, "percentile": percentile_amax}


def _shard(kind: str, seed: int, scale: float, n: int = 40_000) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    data = {
        "gaussian": lambda: rng.standard_normal(n),
        "laplace": lambda: rng.laplace(size=n),
        "post-relu": lambda: np.maximum(rng.standard_normal(n), 0.0),
    }[kind]()
    return torch.from_numpy(data * scale).float()


def _amax(method: str, hist: torch.Tensor, edges: torch.Tensor, unsigned: bool) -> float:
    kwargs = {} if method == "percentile" else {"unsigned": unsigned}
    return float(METHODS[method](hist, edges, **kwargs))


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "post-relu"])
@pytest.mark.parametrize("scales", [(1.0, 1.5), (1.5, 1.0)], ids=["second-wider", "first-wider"])
def test_merged_shards_match_one_calibrator(kind: str, scales: tuple[float, float]) -> None:
    """Ranks seeded with a common grid: merging their histograms == one calibrator that saw all shards.

    The first shard's max plays the all-reduced max; the second shard grows both histograms.
    """
    unsigned = kind == "post-relu"
    shards = [_shard(kind, seed, scale) for seed, scale in enumerate(scales)]
    single = HistogramCalibrator(8, None, unsigned)
    for shard in shards:
        single.collect(shard)

    ranks = [HistogramCalibrator(8, None, unsigned) for _ in shards]
    for rank, shard in zip(ranks, shards, strict=True):
        seed_histogram(rank, shards[0].abs().max())
        rank.collect(shard)
    hist, edges = merge_histograms([(r._calib_hist, r._calib_bin_edges) for r in ranks])

    n = single._calib_hist.numel()
    assert hist.numel() == n and edges.numel() == n + 1
    assert torch.allclose(hist, single._calib_hist.double(), atol=1.0)  # histc boundary round-off only
    width = float(edges[1] - edges[0])
    for method in METHODS:
        merged = _amax(method, hist, edges, unsigned)
        assert abs(merged - float(compute_amax(single, method))) <= 1.0001 * width, method


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "post-relu"])
def test_independently_binned_shards_are_close(kind: str) -> None:
    """Shards binned on their own grids must be re-binned, which loses where samples sat inside a bin.

    Regression guard with observed bounds (not a guarantee): percentile within one bin, mse within three.
    Entropy is not asserted: its KL minimum can move as much as when the data is merely resampled.
    """
    unsigned = kind == "post-relu"
    shards = [_shard(kind, 10 + seed, scale) for seed, scale in enumerate((1.0, 1.3))]
    single = HistogramCalibrator(8, None, unsigned)
    parts = []
    for shard in shards:
        single.collect(shard)
        own = HistogramCalibrator(8, None, unsigned)
        own.collect(shard)
        parts.append((own._calib_hist, own._calib_bin_edges))
    hist, edges = merge_histograms(parts)
    assert float(hist.sum()) == sum(s.numel() for s in shards)
    assert torch.equal(hist, hist.round())  # integer counts stay integer
    width = float(edges[1] - edges[0])
    percentile = _amax("percentile", hist, edges, unsigned)
    assert abs(percentile - float(compute_amax(single, "percentile"))) <= 1.0001 * width
    assert abs(_amax("mse", hist, edges, unsigned) - float(compute_amax(single, "mse"))) <= 3.0001 * width


def test_merge_keeps_first_grid_and_grows_like_collect() -> None:
    a = (np.array([1, 2, 3, 4]), np.array([0.0, 1.0, 2.0, 3.0, 4.0]))
    b = (np.array([2, 2]), np.array([0.0, 3.0, 6.0]))
    hist, edges = merge_histograms([a, b])
    np.testing.assert_allclose(edges, [0, 1, 2, 3, 4, 5, 6])
    # b's first bin [0, 3) is taken as a point mass at 0 (it normally holds the exact zeros) -> bin 0;
    # its second bin [3, 6) is spread uniformly with the cumulative count rounded: 0, 0.67, 1.33, 2 ->
    # 0, 1, 1, 2 at edges 3..6, i.e. whole samples in bins 3 and 5.
    np.testing.assert_array_equal(hist, [1 + 2, 2, 3, 4 + 1, 0, 1])


def test_aligned_histograms_add_exactly_and_types_follow_first() -> None:
    calibrator = HistogramCalibrator(8, None, False, num_bins=128)
    calibrator.collect(_shard("gaussian", 0, 1.0))
    h, e = calibrator._calib_hist, calibrator._calib_bin_edges
    hist, edges = merge_histograms([(h, e), (h.clone(), e.clone()), (None, None)])  # idle rank skipped
    assert isinstance(hist, torch.Tensor) and hist.dtype == torch.float64 and edges.dtype == e.dtype
    assert torch.equal(hist, 2 * h.double()) and torch.equal(edges, e)
    hist_np, edges_np = merge_histograms([(h.numpy(), e.numpy()), (h, e)])
    assert isinstance(hist_np, np.ndarray) and np.array_equal(hist_np, 2 * h.double().numpy())


def test_merge_lower_origin_and_point_masses() -> None:
    a = (np.array([1.0, 1.0]), np.array([1.0, 2.0, 3.0]))
    b = (np.array([5.0, 0.0]), np.array([0.0, 0.0, 0.0]))  # all data exactly 0 (zero-width range)
    hist, edges = merge_histograms([a, b])
    np.testing.assert_allclose(edges, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(hist, [5.0, 1.0, 1.0])
    only_zeros, same_edges = merge_histograms([b, b])
    np.testing.assert_allclose(only_zeros, [10.0, 0.0])
    np.testing.assert_allclose(same_edges, b[1])


def test_merge_errors() -> None:
    with pytest.raises(ValueError, match="no histogram"):
        merge_histograms([(None, None)])
    with pytest.raises(ValueError, match="histogram 1"):
        merge_histograms([(np.ones(2), np.arange(3.0)), (np.ones(2), np.arange(2.0))])


def test_seed_histogram_errors() -> None:
    calibrator = HistogramCalibrator(8, None, False)
    with pytest.raises(ValueError, match="> 0"):
        seed_histogram(calibrator, 0.0)
    seed_histogram(calibrator, 2.0)
    assert calibrator._calib_hist.sum() == 0 and float(calibrator._calib_bin_edges[-1]) == 2.0
    with pytest.raises(ValueError, match="already collected"):
        seed_histogram(calibrator, 2.0)
