"""The built-in amax methods (``max``, ``entropy``, ``mse``, ``percentile``) over a backend's statistics.

Registered by name in :mod:`.methods`; the searches themselves are the pure functions of
:mod:`.amax_search`. ``settings`` is the recipe's ``calibration`` section (or None: defaults).
"""

from __future__ import annotations

from typing import Any

import torch

from .amax_search import EmptyCalibratorError, entropy_amax, mse_amax, percentile_amax


def histogram_of(stats: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, edges)`` read the way pytorch-quantization reads its own histogram: torch counts
    truncated to integers, and a trailing extra edge (left by growing the histogram) dropped."""
    if not stats or stats.get("hist") is None or stats.get("edges") is None:
        raise EmptyCalibratorError("histogram is empty: no data has been collected")
    hist, edges = stats["hist"], stats["edges"]
    if isinstance(hist, torch.Tensor):
        hist = hist.int()
    if len(edges) == len(hist) + 2:
        edges = edges[: len(hist) + 1]
    return hist, edges


def _get(settings: Any, key: str, default: Any) -> Any:
    return default if settings is None else getattr(settings, key, default)


def max_amax(stats: dict, num_bits: int, unsigned: bool, settings: Any) -> torch.Tensor:
    """The absolute maximum seen (a histogram's last bin edge)."""
    if "hist" in stats:
        return torch.as_tensor(stats["edges"][-1]).detach().float().clone()
    if stats.get("amax") is None:
        raise EmptyCalibratorError("max calibrator has collected no data")
    return stats["amax"].detach().clone()


def entropy(stats: dict, num_bits: int, unsigned: bool, settings: Any) -> torch.Tensor:
    hist, edges = histogram_of(stats)
    return entropy_amax(hist, edges, num_bits, unsigned, stride=_get(settings, "stride", 1),
                        start_bin=_get(settings, "start_bin", 128))


def mse(stats: dict, num_bits: int, unsigned: bool, settings: Any) -> torch.Tensor:
    hist, edges = histogram_of(stats)
    return mse_amax(hist, edges, num_bits, unsigned, stride=_get(settings, "stride", 1),
                    start_bin=_get(settings, "start_bin", 128))


def percentile_of(stats: dict, percentile: float) -> torch.Tensor:
    hist, edges = histogram_of(stats)
    return percentile_amax(hist, edges, percentile=percentile)


def percentile(stats: dict, num_bits: int, unsigned: bool, settings: Any) -> torch.Tensor:
    return percentile_of(stats, _get(settings, "percentile", 99.99))
