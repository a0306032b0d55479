"""The run-based MSE search (``calib/mse_search.py``) vs the bin-by-bin reference and pytorch-quantization.

``dense_errors`` over every candidate is the definition the search must reproduce exactly (same first
argmin); upstream's ``_compute_amax_mse`` (float32 sums) must agree on the chosen amax, or -- only where
candidates tie within float32 rounding -- have the same upstream error at both choices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_quantization.calib import histogram as upstream_hist

from recipe_engine.calib import mse_search
from recipe_engine.calib.amax_search import mse_amax
from tests.helpers import upstream_on_cpu


def _centers(edges: np.ndarray) -> np.ndarray:
    e = torch.from_numpy(np.asarray(edges, dtype=np.float32))
    return ((e[1:] + e[:-1]) / 2).numpy()


def _bounds(num_bits: int, unsigned: bool) -> tuple[float, float]:
    hi = float(2 ** (num_bits - 1 + int(unsigned)) - 1)
    return hi, 0.0 if unsigned else -hi


def _dense_best(counts: np.ndarray, edges: np.ndarray, cand: np.ndarray, num_bits: int, unsigned: bool) -> int:
    errors = mse_search.dense_errors(counts.astype(np.float64), _centers(edges), cand, *_bounds(num_bits, unsigned))
    return int(np.argmin(errors))


def _upstream_errors(counts: np.ndarray, edges: np.ndarray, indices: list[int], num_bits: int, unsigned: bool):
    """Upstream's own float32 per-candidate MSE (its loop body) at the given bin indices."""
    from pytorch_quantization.tensor_quant import fake_tensor_quant

    c = torch.from_numpy(np.asarray(edges, dtype=np.float32))
    centers = (c[1:] + c[:-1]) / 2
    w = torch.from_numpy(np.asarray(counts)).float()
    return [float(((fake_tensor_quant(centers, centers[i], num_bits, unsigned) - centers) ** 2 * w).mean())
            for i in indices]


def _histograms():
    """(id, counts, edges, num_bits, unsigned, start_bin, stride): random and adversarial histograms."""
    rng = np.random.default_rng(0)
    out = []
    for seed in range(6):  # activation-like, grown (arange edges), heavy tails, many empty bins
        r = np.random.default_rng(seed)
        n = int(r.integers(300, 3000))
        x = np.abs(r.standard_t(3, 50_000)) * r.uniform(0.1, 5)
        counts, _ = np.histogram(x, bins=n, range=(0, x.max()))
        width = np.float32(x.max() / n)
        edges = torch.arange(0, n + 1, dtype=torch.float32).mul(float(width)).numpy()
        out.append((f"t3-{seed}", counts, edges, 8, bool(seed % 2), 128, 1))
    sparse = np.zeros(1024, dtype=np.int64)
    sparse[rng.choice(1024, 40, replace=False)] = rng.integers(1, 10_000, 40)
    out.append(("sparse-empty-bins", sparse, np.linspace(0, 3, 1025, dtype=np.float32), 8, False, 128, 1))
    integer = np.zeros(512, dtype=np.int64)  # integer-valued data: every nonzero bin a level point for some amax
    integer[::8] = rng.integers(1, 1000, 64)
    out.append(("integer-valued", integer, np.linspace(0, 512, 513, dtype=np.float32), 8, False, 128, 1))
    one = np.zeros(256, dtype=np.int64)
    one[0] = 1000  # all mass in bin 0: every large candidate ties exactly
    out.append(("all-mass-bin-0", one, np.linspace(0, 1, 257, dtype=np.float32), 8, False, 128, 1))
    flat = np.full(700, 5, dtype=np.int64)  # uniform: many near-ties
    out.append(("flat", flat, np.linspace(0, 7, 701, dtype=np.float32), 8, False, 64, 1))
    out.append(("flat-4bit-unsigned", flat, np.linspace(0, 7, 701, dtype=np.float32), 4, True, 16, 3))
    peaks = np.zeros(2000, dtype=np.int64)
    peaks[[3, 500, 1999]] = [10**6, 10, 1]  # huge counts, far outlier in the last bin
    out.append(("peaks-outlier", peaks, np.linspace(0, 100, 2001, dtype=np.float32), 8, False, 128, 1))
    nonuni = np.sort(rng.uniform(0, 4, 601)).astype(np.float32)
    nonuni[0] = 0
    out.append(("non-uniform-edges", rng.integers(0, 50, 600), nonuni, 8, False, 128, 1))
    signed = np.linspace(-2, 2, 801, dtype=np.float32)  # centres below 0 (pure-function input)
    out.append(("negative-centres", rng.integers(0, 100, 800), signed, 8, False, 420, 1))
    tiny = np.linspace(0, 2e-5, 301, dtype=np.float32)  # candidates around the amax ~ 0 threshold (2**-24)
    out.append(("tiny-amax", rng.integers(0, 100, 300), tiny, 8, False, 0, 1))
    single = (np.array([7]), np.array([0.0, 1.0], dtype=np.float32), 8, False, 0, 1)
    out.append(("single-bin", *single))
    zeros = (np.array([0, 5, 0, 0]), np.zeros(5, dtype=np.float32), 8, False, 0, 1)  # all data == 0
    out.append(("zero-width", *zeros))
    return out


HISTOGRAMS = _histograms()


@pytest.mark.parametrize("case", HISTOGRAMS, ids=[h[0] for h in HISTOGRAMS])
def test_search_picks_the_dense_reference_argmin(case) -> None:
    _, counts, edges, num_bits, unsigned, start_bin, stride = case
    cand = np.arange(start_bin, len(counts), stride)
    best = mse_search.mse_best(counts.astype(np.float64), _centers(edges), cand, *_bounds(num_bits, unsigned))
    assert best == _dense_best(counts, edges, cand, num_bits, unsigned)


@pytest.mark.parametrize("case", HISTOGRAMS, ids=[h[0] for h in HISTOGRAMS])
def test_mse_amax_matches_upstream(case) -> None:
    """Same amax as upstream, or (float32 ties) the same upstream error at both candidates."""
    name, counts, edges, num_bits, unsigned, start_bin, stride = case
    ours = float(mse_amax(counts, edges, num_bits, unsigned, stride=stride, start_bin=start_bin))
    with upstream_on_cpu():
        theirs = float(upstream_hist._compute_amax_mse(counts.copy(), edges, num_bits, unsigned,
                                                        stride=stride, start_bin=start_bin))
    if ours != theirs:
        centers = _centers(edges)
        i_ours = int(np.flatnonzero(centers == np.float32(ours))[0])
        i_theirs = int(np.flatnonzero(centers == np.float32(theirs))[0])
        with upstream_on_cpu():
            e_ours, e_theirs = _upstream_errors(counts, edges, [i_ours, i_theirs], num_bits, unsigned)
        assert e_ours == pytest.approx(e_theirs, rel=1e-6, abs=0), name


def test_random_histograms_pick_the_dense_reference_argmin() -> None:
    """Many small random histograms: shapes, empty bins, bit widths, signedness, start_bin and stride."""
    rng = np.random.default_rng(5)
    for trial in range(60):
        n = int(rng.integers(40, 500))
        kind = trial % 4
        if kind == 0:
            counts = rng.integers(0, 1000, n)
        elif kind == 1:
            counts = np.histogram(np.abs(rng.laplace(size=5000)), bins=n)[0]
        elif kind == 2:
            counts = rng.integers(0, 3, n) * rng.integers(0, 2, n)  # mostly empty, small counts: ties
        else:
            counts = np.zeros(n, dtype=np.int64)
            counts[rng.integers(0, n, 3)] = rng.integers(1, 10**7, 3)
        if not counts.any():
            counts[0] = 1
        edges = np.linspace(0, float(rng.uniform(1e-3, 1e3)), n + 1, dtype=np.float32)
        num_bits = int(rng.choice([4, 6, 8]))
        unsigned = bool(rng.integers(0, 2))
        cand = np.arange(int(rng.integers(0, n // 2)), n, int(rng.integers(1, 4)))
        best = mse_search.mse_best(counts.astype(np.float64), _centers(edges), cand, *_bounds(num_bits, unsigned))
        assert best == _dense_best(counts, edges, cand, num_bits, unsigned), trial


def test_negative_candidate_amax_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        mse_amax(np.ones(800), np.linspace(-2, 2, 801, dtype=np.float32), start_bin=128)


def test_tie_breaking_goes_to_the_first_candidate() -> None:
    counts = np.zeros(256)
    counts[0] = 1000  # candidates 129.. all quantise bin 0 to 0: identical errors
    best = mse_search.mse_best(counts, _centers(np.linspace(0, 1, 257, dtype=np.float32)), np.arange(128, 256),
                               127.0, -127.0)
    errors = mse_search.dense_errors(counts, _centers(np.linspace(0, 1, 257, dtype=np.float32)),
                                     np.arange(128, 256), 127.0, -127.0)
    assert (errors == errors[best]).sum() > 1  # a real tie
    assert best == int(np.flatnonzero(errors == errors.min())[0])


@pytest.mark.parametrize("uniform", [True, False])
def test_run_boundaries_are_exact(uniform: bool) -> None:
    """B_k equals the first bin whose float32 level (rint(c * scale), ties to even) is >= k, also where
    c * scale lands exactly on k - 0.5 (half-integer centres with scale 1)."""
    rng = np.random.default_rng(1)
    if uniform:
        edges = np.arange(0, 255.5, 0.5, dtype=np.float32) - np.float32(0.25)  # centres 0, 0.5, ..., 127
        edges[0] = 0.0
    else:
        edges = np.concatenate(([0.0], np.sort(rng.uniform(0, 127, 400)))).astype(np.float32)
    centers = _centers(edges)
    runs = mse_search._Runs(np.ones(centers.size), centers, 127.0, -127.0)
    scales = np.concatenate(([1.0], rng.uniform(0.5, 3.0, 30))).astype(np.float32)
    ks = np.arange(1, 128)
    bounds = runs.boundaries(scales, ks)
    for r, s in enumerate(scales):
        levels = np.clip(np.rint(centers * s), -127, 127)
        expected = np.array([np.searchsorted(levels, k, side="left") for k in ks])
        assert np.array_equal(bounds[r], expected), (uniform, float(s))


def test_most_candidates_stop_early_on_a_calibration_histogram() -> None:
    """The bound does its job: few candidates are evaluated over all levels (a regression in the bound
    would make this quadratic again without changing any result)."""
    rng = np.random.default_rng(2)
    x = np.abs(rng.standard_t(3, 200_000))
    counts, _ = np.histogram(x, bins=6000, range=(0, x.max()))
    centers = _centers(np.linspace(0, x.max(), 6001, dtype=np.float32))
    _, _, done = mse_search._candidate_errors(counts.astype(np.float64), centers, np.arange(128, 6000),
                                             127.0, -127.0)
    assert done.sum() < 0.2 * done.size
