"""Benchmark: pytorch-quantization's HistogramCalibrator.compute_amax vs recipe_engine.calib.amax_search.

Fills N histogram calibrators (default 60, 2048 bins) with activation-like data -- pre-activations
(gaussian / laplace), post-ReLU (unsigned, many exact zeros), heavy-tailed residual sums with outliers --
over several batches (so some histograms grow past 2048 bins like in real calibration), then times the
amax of every calibrator with upstream and with ours, and prints a markdown table.

Upstream's MSE path calls ``.cuda()`` (calib/histogram.py line 265); as in the tests, it is run on CPU
with ``torch.Tensor.cuda`` temporarily patched to the identity, i.e. upstream's exact math on CPU.

``--histograms PATH`` times the histograms a calibration really collected instead: the file
``benchmarks/real_scale.py --save-histograms PATH`` writes (nuScenes-sized CenterPoint, 2k-10k bins).

Usage: python benchmarks/amax_search.py [--quantizers 60] [--bins 2048] [--threads 1] [--repeat 3]
       python benchmarks/amax_search.py --histograms /tmp/real_scale_b1.pt [--methods mse]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from pytorch_quantization.calib import HistogramCalibrator

from recipe_engine.backends.pytorch_quantization.calibrators import compute_amax


@contextlib.contextmanager
def cuda_is_identity() -> Iterator[None]:
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def activation_batch(
    kind: int, rng: np.random.Generator, n: int, scale: float, outlier: float
) -> tuple[np.ndarray, bool]:
    """One batch of activation-like values; returns (data, unsigned)."""
    if kind == 0:  # conv pre-activation
        return rng.standard_normal(n) * scale, False
    if kind == 1:  # post-ReLU: half exact zeros, skewed positive part
        return np.maximum(rng.standard_normal(n) * scale + 0.2 * scale, 0.0), True
    if kind == 2:  # attention / linear outputs
        return rng.laplace(size=n) * scale, False
    x = np.clip(rng.standard_t(3.0, n), -12.0, 12.0) * scale  # residual sums, a few large outliers
    x[rng.integers(0, n, 5)] = rng.choice([-1.0, 1.0], 5) * rng.uniform(0.9, 1.0, 5) * outlier * scale
    return x, False


def build_calibrators(count: int, bins: int, seed: int = 0) -> list[HistogramCalibrator]:
    rng = np.random.default_rng(seed)
    calibrators = []
    for index in range(count):
        kind = index % 4
        scale = float(rng.uniform(0.2, 4.0))
        unsigned = kind == 1
        outlier = float(rng.uniform(15.0, 30.0))
        calibrator = HistogramCalibrator(8, None, unsigned, num_bins=bins)
        for _ in range(4):  # batches; varying spread so some histograms grow
            data, _ = activation_batch(kind, rng, 16_384, scale * float(rng.uniform(0.9, 1.1)), outlier)
            calibrator.collect(torch.from_numpy(data).float())
        calibrators.append(calibrator)
    return calibrators


def load_calibrators(path: str) -> list[HistogramCalibrator]:
    """Calibrators holding the histograms saved by ``real_scale.py --save-histograms``."""
    calibrators = []
    for saved in torch.load(path):
        calibrator = HistogramCalibrator(saved["num_bits"], None, saved["unsigned"], num_bins=len(saved["hist"]))
        calibrator._calib_hist = saved["hist"].float()
        calibrator._calib_bin_edges = saved["edges"].float()
        calibrators.append(calibrator)
    return calibrators


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
    start = time.perf_counter()
    value = float(fn())
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quantizers", type=int, default=60)
    parser.add_argument("--bins", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both implementations")
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours per calibrator (best kept)")
    parser.add_argument("--methods", default="entropy,mse,percentile")
    parser.add_argument("--histograms", default=None, metavar="PATH",
                        help="histograms saved by real_scale.py --save-histograms (instead of generated ones)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    calibrators = load_calibrators(args.histograms) if args.histograms else build_calibrators(args.quantizers, args.bins)
    sizes = [c._calib_hist.numel() for c in calibrators]
    print(
        f"{len(calibrators)} histogram calibrators, {min(sizes)}-{max(sizes)} bins "
        f"(median {sorted(sizes)[len(sizes) // 2]}, {sum(s > args.bins for s in sizes)} above {args.bins}), "
        f"torch threads={args.threads}\n"
    )
    print("| method | upstream total s | ours total s | speed-up | max abs amax diff (bins) |")
    print("|---|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        upstream_s = ours_s = 0.0
        worst = 0.0
        for calibrator in calibrators:
            with cuda_is_identity():
                t_up, a_up = timed(lambda c=calibrator, m=method: c.compute_amax(m))
            t_ours, a_ours = min(
                timed(lambda c=calibrator, m=method: compute_amax(c, m)) for _ in range(args.repeat)
            )
            edges = calibrator._calib_bin_edges
            worst = max(worst, abs(a_ours - a_up) / float(edges[1] - edges[0]))
            upstream_s += t_up
            ours_s += t_ours
        print(
            f"| {method} | {upstream_s:.2f} | {ours_s:.3f} | {upstream_s / ours_s:.0f}x | {worst:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
