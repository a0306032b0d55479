"""Amax methods by name: how a quantizer's collected statistics become its amax.

A method is a function ``fn(stats, num_bits, unsigned, settings) -> torch.Tensor`` where ``stats``
is what a backend returns from ``statistics(quantizer)`` (``{"amax"}`` for a max calibrator,
``{"hist", "edges"}`` for a histogram) and ``settings`` the recipe's ``calibration`` section
(percentile, start_bin, stride). Built-ins register exactly as an extension does::

    from recipe_engine.calib import methods

    @methods.register("p99", needs_histogram=True)
    def p99(stats, num_bits, unsigned, settings):
        return methods.percentile_of(stats, 99.0)

Every backend goes through these functions, so two backends given the same data give the same amax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .amax_search import EmptyCalibratorError, entropy_amax, mse_amax, percentile_amax

AmaxFn = Callable[[dict, int, bool, Any], torch.Tensor]


@dataclass(frozen=True)
class AmaxMethod:
    name: str
    fn: AmaxFn
    needs_histogram: bool


_REGISTRY: dict[str, AmaxMethod] = {}


def register(name: str, fn: AmaxFn | None = None, *, needs_histogram: bool = True):
    """Register ``fn`` as amax method ``name`` (also a decorator). ``needs_histogram=False``: it also
    accepts a max calibrator's ``{"amax"}`` statistics."""
    def decorate(func: AmaxFn) -> AmaxFn:
        _REGISTRY[name] = AmaxMethod(name, func, needs_histogram)
        return func

    return decorate(fn) if fn is not None else decorate


def lookup(name: str) -> AmaxMethod | None:
    return _REGISTRY.get(name)


def registered() -> list[str]:
    return sorted(_REGISTRY)


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


def amax_from_statistics(stats: dict | None, method: str, num_bits: int = 8, unsigned: bool = False,
                         settings: Any = None) -> torch.Tensor:
    """Amax of ``stats`` by the registered ``method``; raises ``ValueError`` with the known names."""
    entry = _REGISTRY.get(method)
    if entry is None:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {registered()}")
    if stats is None:
        raise EmptyCalibratorError("the calibrator has collected no data")
    if entry.needs_histogram and "hist" not in stats:
        raise ValueError(f"calibration method {method!r} needs a histogram calibrator (calibrator: histogram)")
    return entry.fn(stats, num_bits, unsigned, settings)


def _get(settings: Any, key: str, default: Any) -> Any:
    return default if settings is None else getattr(settings, key, default)


@register("max", needs_histogram=False)
def _max(stats: dict, num_bits: int, unsigned: bool, settings: Any) -> torch.Tensor:
    """The absolute maximum seen (a histogram's last bin edge)."""
    if "hist" in stats:
        return torch.as_tensor(stats["edges"][-1]).detach().float().clone()
    if stats.get("amax") is None:
        raise EmptyCalibratorError("max calibrator has collected no data")
    return stats["amax"].detach().clone()


@register("entropy")
def _entropy(stats: dict, num_bits: int, unsigned: bool, settings: Any) -> torch.Tensor:
    hist, edges = histogram_of(stats)
    return entropy_amax(hist, edges, num_bits, unsigned, stride=_get(settings, "stride", 1),
                        start_bin=_get(settings, "start_bin", 128))


@register("mse")
def _mse(stats: dict, num_bits: int, unsigned: bool, settings: Any) -> torch.Tensor:
    hist, edges = histogram_of(stats)
    return mse_amax(hist, edges, num_bits, unsigned, stride=_get(settings, "stride", 1),
                    start_bin=_get(settings, "start_bin", 128))


def percentile_of(stats: dict, percentile: float) -> torch.Tensor:
    hist, edges = histogram_of(stats)
    return percentile_amax(hist, edges, percentile=percentile)


@register("percentile")
def _percentile(stats: dict, num_bits: int, unsigned: bool, settings: Any) -> torch.Tensor:
    return percentile_of(stats, _get(settings, "percentile", 99.99))
