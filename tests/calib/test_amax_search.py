"""Vectorised amax search vs pytorch-quantization 2.1.3's own compute_amax.

Histograms are recorded by running seeded activation-like data through a real ``HistogramCalibrator``.
Upstream's MSE path calls ``.cuda()`` (calib/histogram.py line 265), so its reference is computed by
calling upstream's ``_compute_amax_mse`` with ``torch.Tensor.cuda`` temporarily patched to the identity
(test-only, see ``upstream_on_cpu``); this runs upstream's exact math on CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator
from pytorch_quantization.calib import histogram as upstream_hist

from recipe_engine.backends.pytorch_quantization.calibrators import compute_amax
from recipe_engine.calib.amax_search import (
    EmptyCalibratorError,
    entropy_amax,
    mse_amax,
    percentile_amax,
)
from tests.helpers import upstream_on_cpu


def upstream_amax(method: str, calibrator: HistogramCalibrator, **kwargs: object) -> float:
    """pytorch-quantization's ``compute_amax`` (on a copy: upstream's entropy mutates numpy histograms)."""
    hist, edges = calibrator._calib_hist, calibrator._calib_bin_edges
    copy = HistogramCalibrator(
        calibrator._num_bits, None, calibrator._unsigned, torch_hist=calibrator._torch_hist
    )
    copy._calib_hist = hist.clone() if isinstance(hist, torch.Tensor) else hist.copy()
    copy._calib_bin_edges = edges
    with upstream_on_cpu():
        return float(copy.compute_amax(method, **kwargs))


def bin_width(calibrator: HistogramCalibrator) -> float:
    edges = calibrator._calib_bin_edges
    return float(edges[1] - edges[0])


# ------------------------------------------------------------------------------------------------------
# recorded histograms
# ------------------------------------------------------------------------------------------------------
def _gaussian(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n)


def _laplace(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.laplace(size=n)


def _uniform(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-3.0, 3.0, n)


def _heavy_tailed(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_t(2.5, n)
    x[rng.integers(0, n, 8)] = rng.choice([-1.0, 1.0], 8) * rng.uniform(40.0, 80.0, 8)  # outliers
    return x


def _post_relu(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.maximum(rng.standard_normal(n) * 1.5 + 0.3, 0.0)


def _many_zeros(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.6, 0.0, rng.laplace(size=n) * 0.5)


# name -> (data, unsigned, num_bins, batch scales: a scale > the first one grows the histogram)
CASES: dict[str, tuple[Callable[[np.random.Generator, int], np.ndarray], bool, int, tuple[float, ...]]] = {
    "gaussian-2048": (_gaussian, False, 2048, (1.0, 1.0)),
    "laplace-1024": (_laplace, False, 1024, (1.0, 0.8)),
    "uniform-1024": (_uniform, False, 1024, (1.0,)),
    "heavy-tailed-outliers-2048": (_heavy_tailed, False, 2048, (1.0,)),
    "post-relu-unsigned-2048": (_post_relu, True, 2048, (1.0, 0.9)),
    "many-zeros-1024": (_many_zeros, False, 1024, (1.0,)),
    "gaussian-512": (_gaussian, False, 512, (1.0, 0.7)),
    "post-relu-unsigned-256": (_post_relu, True, 256, (1.0,)),
    "laplace-grown-768": (_laplace, False, 768, (1.0, 1.3, 1.6)),
}


@functools.cache
def recorded(name: str) -> HistogramCalibrator:
    make, unsigned, num_bins, scales = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    calibrator = HistogramCalibrator(8, None, unsigned, num_bins=num_bins)
    for scale in scales:
        calibrator.collect(torch.from_numpy(make(rng, 40_000) * scale).float())
    return calibrator


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"])
def test_matches_upstream_within_one_bin(name: str, method: str) -> None:
    calibrator = recorded(name)
    ours = compute_amax(calibrator, method)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    reference = upstream_amax(method, calibrator)
    assert abs(float(ours) - reference) <= 1.0001 * bin_width(calibrator), (float(ours), reference)


@pytest.mark.parametrize(
    "name, method, kwargs",
    [
        ("gaussian-512", "entropy", {"stride": 3, "start_bin": 64}),
        ("gaussian-512", "mse", {"stride": 3, "start_bin": 64}),
        ("laplace-1024", "entropy", {"stride": 7, "start_bin": 300}),
        ("heavy-tailed-outliers-2048", "mse", {"stride": 2, "start_bin": 32}),
        ("post-relu-unsigned-2048", "percentile", {"percentile": 99.0}),
        ("many-zeros-1024", "percentile", {"percentile": 100.0}),
        ("heavy-tailed-outliers-2048", "percentile", {"percentile": 0.0}),
    ],
)
def test_search_parameters_match_upstream(name: str, method: str, kwargs: dict) -> None:
    calibrator = recorded(name)
    ours = compute_amax(calibrator, method, **kwargs)
    assert abs(float(ours) - upstream_amax(method, calibrator, **kwargs)) <= 1.0001 * bin_width(calibrator)


@pytest.mark.parametrize("num_bits, unsigned", [(4, False), (6, True), (8, True)])
@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_num_bits_and_unsigned_match_upstream(num_bits: int, unsigned: bool, method: str) -> None:
    base = recorded("gaussian-512")
    calibrator = HistogramCalibrator(num_bits, None, unsigned, num_bins=512)
    calibrator._calib_hist, calibrator._calib_bin_edges = base._calib_hist, base._calib_bin_edges
    ours = compute_amax(calibrator, method)
    assert abs(float(ours) - upstream_amax(method, calibrator)) <= 1.0001 * bin_width(calibrator)


def test_numpy_histogram_calibrator_matches_upstream() -> None:
    """``torch_hist=False`` keeps an int64 NumPy histogram whose edges start at min|x|, not 0."""
    rng = np.random.default_rng(7)
    calibrator = HistogramCalibrator(8, None, False, num_bins=600, torch_hist=False)
    for scale in (1.0, 1.4):
        calibrator.collect(torch.from_numpy(rng.laplace(size=30_000) * scale).float())
    hist_before = calibrator._calib_hist.copy()
    for method in ("entropy", "mse", "percentile"):
        ours = compute_amax(calibrator, method)
        assert abs(float(ours) - upstream_amax(method, calibrator)) <= 1.0001 * bin_width(calibrator)
    np.testing.assert_array_equal(calibrator._calib_hist, hist_before)  # we never mutate the histogram


# ------------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------------
def _synthetic(counts: dict[int, int], num_bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    hist = np.zeros(num_bins, dtype=np.int64)
    for index, count in counts.items():
        hist[index] = count
    return hist, np.linspace(0.0, 1.0, num_bins + 1, dtype=np.float32)


def _upstream_pure(method: str, hist: np.ndarray, edges: np.ndarray, **kwargs: object) -> float:
    hist = hist.copy()
    with upstream_on_cpu():
        if method == "entropy":
            return float(upstream_hist._compute_amax_entropy(hist, edges, 8, False, **kwargs))
        if method == "mse":
            return float(upstream_hist._compute_amax_mse(hist, edges, 8, False, **kwargs))
        return float(upstream_hist._compute_amax_percentile(hist, edges, 99.99))


OURS = {"entropy": entropy_amax, "mse": mse_amax, "percentile": percentile_amax}


@pytest.mark.parametrize(
    "counts",
    [{0: 1000}, {0: 1000, 1: 3}, {100: 50}, {200: 50}, {3: 7, 130: 1, 255: 2}],
    ids=["all-mass-in-bin-0", "bin-0-and-1", "single-bin-100", "single-bin-200", "sparse"],
)
@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"])
def test_degenerate_histograms_match_upstream(counts: dict[int, int], method: str) -> None:
    hist, edges = _synthetic(counts)
    assert float(OURS[method](hist, edges)) == pytest.approx(_upstream_pure(method, hist, edges))


def test_all_mass_in_bin_0_values() -> None:
    """Upstream quirks kept: entropy's NaN divergences pick the last candidate; percentile the left edge."""
    hist, edges = _synthetic({0: 1000})
    assert float(entropy_amax(hist, edges)) == pytest.approx(1.0)
    assert float(percentile_amax(hist, edges)) == 0.0
    assert float(mse_amax(hist, edges)) == pytest.approx((edges[128] + edges[129]) / 2)


def test_exact_kl_ties_broken_like_upstream() -> None:
    """Integer-valued data leaves most bins empty; many candidates then tie at KL == 0 exactly."""
    rng = np.random.default_rng(3)
    data = np.round(np.abs(rng.standard_normal(20_000)) * 8) / 8
    calibrator = HistogramCalibrator(8, None, False, num_bins=512)
    calibrator.collect(torch.from_numpy(data).float())
    assert float(compute_amax(calibrator, "entropy")) == pytest.approx(upstream_amax("entropy", calibrator))


def test_all_zero_data_gives_zero_amax() -> None:
    calibrator = HistogramCalibrator(8, None, False, num_bins=256)
    calibrator.collect(torch.zeros(100))
    for method in ("entropy", "mse", "percentile"):
        assert float(compute_amax(calibrator, method)) == upstream_amax(method, calibrator) == 0.0


def test_tensor_and_numpy_inputs_agree_and_are_not_mutated() -> None:
    calibrator = recorded("gaussian-512")
    hist_t, edges_t = calibrator._calib_hist.int(), calibrator._calib_bin_edges
    hist_n, edges_n = hist_t.numpy().copy(), edges_t.numpy().copy()
    for fn in OURS.values():
        assert float(fn(hist_t, edges_t)) == float(fn(hist_n, edges_n))
    np.testing.assert_array_equal(hist_n, hist_t.numpy())


def test_extra_edge_left_by_upstream_growth_is_tolerated() -> None:
    """collect() occasionally leaves len(edges) == len(hist) + 2 after growing (torch.arange rounding)."""
    calibrator = HistogramCalibrator(8, None, False, num_bins=300)
    calibrator.collect(torch.from_numpy(np.random.default_rng(1).laplace(size=5000)).float())
    edges = calibrator._calib_bin_edges
    calibrator._calib_bin_edges = torch.cat((edges, edges[-1:] + (edges[1] - edges[0])))
    for method in ("entropy", "percentile"):
        assert float(compute_amax(calibrator, method)) == upstream_amax(method, calibrator)
    assert torch.isfinite(compute_amax(calibrator, "mse"))  # upstream's mse fails on the shape mismatch


def test_max_calibrator() -> None:
    calibrator = MaxCalibrator(8, None, False)
    calibrator.collect(torch.tensor([-3.0, 1.0]))
    calibrator.collect(torch.tensor([2.0]))
    amax = compute_amax(calibrator, "max")
    assert torch.equal(amax, calibrator.compute_amax())
    assert amax is not calibrator.compute_amax()


@pytest.mark.parametrize("calibrator", [HistogramCalibrator(8, None, False), MaxCalibrator(8, None, False)])
def test_empty_calibrator_raises_clear_error(calibrator: object) -> None:
    method = "max" if isinstance(calibrator, MaxCalibrator) else "entropy"
    with pytest.raises(EmptyCalibratorError, match="collected no data"):
        compute_amax(calibrator, method)
    assert issubclass(EmptyCalibratorError, ValueError)


def test_unknown_method_and_calibrator_raise() -> None:
    with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
        compute_amax(recorded("gaussian-512"), "kl")
    with pytest.raises(ValueError, match="unknown calibration method 'entropy'.*MaxCalibrator"):
        compute_amax(MaxCalibrator(8, None, False), "entropy")
    with pytest.raises(TypeError, match="unsupported calibrator"):
        compute_amax(object(), "max")


def test_invalid_histograms_raise() -> None:
    hist, edges = _synthetic({5: 1})
    with pytest.raises(EmptyCalibratorError, match="all counts are zero"):
        mse_amax(np.zeros(256), edges)
    with pytest.raises(EmptyCalibratorError):
        entropy_amax(None, None)
    with pytest.raises(ValueError, match="len\\(hist\\) \\+ 1"):
        percentile_amax(hist, edges[:-1])
    with pytest.raises(ValueError, match="start_bin=300"):
        entropy_amax(hist, edges, start_bin=300)
    with pytest.raises(ValueError, match="start_bin=256"):
        mse_amax(hist, edges, start_bin=256)
    with pytest.raises(ValueError, match="percentile"):
        percentile_amax(hist, edges, percentile=101)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mse_on_gpu_matches_cpu() -> None:
    calibrator = recorded("gaussian-2048")
    hist, edges = calibrator._calib_hist.int(), calibrator._calib_bin_edges
    on_gpu = mse_amax(hist.cuda(), edges.cuda())
    assert on_gpu.device.type == "cuda"
    assert float(on_gpu) == float(mse_amax(hist, edges))


def test_entropy_blocks_give_the_unblocked_divergences(monkeypatch) -> None:
    """The closed-form KL evaluated in cache-sized blocks of candidates is the one-block result, bit for bit."""
    from recipe_engine.calib import amax_search

    rng = np.random.default_rng(4)
    b = np.histogram(np.abs(rng.standard_t(3, 100_000)), bins=3000)[0].astype(np.float64)
    b[rng.integers(0, 3000, 300)] = 0  # empty bins
    b[0] = b[1]
    cand = np.arange(128, 3001)
    blocked = amax_search._kl_closed_form(b, cand, 128)
    monkeypatch.setattr(amax_search, "_KL_BLOCK", 1 << 40)
    whole = amax_search._kl_closed_form(b, cand, 128)
    assert np.array_equal(blocked, whole, equal_nan=True)
