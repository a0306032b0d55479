"""The calibration driver: run data through the model, then set every quantizer's amax."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..quant import backend
from ..quant.apply import QuantizerSettings, QuantState, get_state
from ..recipe.errors import RecipeError
from ..recipe.schema import CalibrationSection
from .collect import collect_statistics  # noqa: F401 - re-exported
from .methods import amax_from_statistics


@dataclass
class CalibrationResult:
    """What calibration did: batches seen, time, and each quantizer's amax summary."""

    batches: int
    seconds: float
    amax: dict[str, dict] = field(default_factory=dict)


def finish_calibration(state: QuantState, settings: CalibrationSection) -> dict[str, dict]:
    """Compute amax for every quantizer from its statistics; fail loudly on missing or bad values."""
    summary: dict[str, dict] = {}
    for names, quantizer in state.unique():
        label = names[0] if len(names) == 1 else f"{names[0]} (shared with {', '.join(names[1:])})"
        settings_of = state.settings.get(names[0], QuantizerSettings())  # names[0]: as settings_of, no scan
        if settings_of.fixed_amax:
            amax = backend.get_amax(quantizer)
        else:
            if not backend.has_statistics(quantizer):
                raise RecipeError(
                    f"quantizer {label} saw no data during calibration",
                    hint="the module never ran on the calibration batches: disable it or fix the data",
                )
            method = settings_of.method or settings.method
            if not backend.is_histogram(quantizer):
                method = "max"
            info = backend.describe(quantizer)
            try:
                amax = amax_from_statistics(backend.calibration_statistics(quantizer), method,
                                            info["num_bits"], bool(info["unsigned"]), settings)
            except ValueError as exc:
                raise RecipeError(f"quantizer {label}: {exc}") from None
            amax = _check_amax(label, amax)
            backend.set_amax(quantizer, amax)
        flat = amax.flatten().float()
        summary[names[0]] = {
            "names": names,
            "amax_min": float(flat.min()),
            "amax_max": float(flat.max()),
            "channels": int(flat.numel()),
            "method": "fixed" if settings_of.fixed_amax else method,
        }
    return summary


def _check_amax(label: str, amax: torch.Tensor) -> torch.Tensor:
    amax = torch.as_tensor(amax).detach().float()
    if not torch.isfinite(amax).all():
        raise RecipeError(
            f"quantizer {label}: calibration produced a non-finite amax ({amax.flatten()[:4].tolist()})",
            hint="check the data for NaN/inf values",
        )
    if amax.numel() == 1 or bool((amax <= 0).all()):
        if float(amax.max()) <= 0:
            raise RecipeError(
                f"quantizer {label}: calibration produced amax = 0 (the tensor was all zeros)",
                hint="disable this quantizer, or check that the layer receives real data",
            )
        return amax
    dead = amax <= 0
    if dead.any():
        smallest = float(amax[~dead].min())
        warnings.warn(
            f"{label}: {int(dead.sum())} channel(s) are all zeros; using amax {smallest:g} for them",
            stacklevel=3,
        )
        amax = torch.where(dead, torch.full_like(amax, smallest), amax)
    return amax


def _merge_across_ranks(state: QuantState, count: int) -> int:
    """Under torchrun, combine every rank's statistics (max / merged histograms); returns the total batches."""
    from ..train.distributed import merge_statistics

    return merge_statistics(state, count)


def calibrate(
    model: nn.Module,
    batches: Iterable,
    settings: CalibrationSection | None = None,
    forward: Callable | None = None,
    show_progress: bool = True,
) -> CalibrationResult:
    """Calibrate a quantized model: collect statistics on ``batches``, then set every amax."""
    from ..data import default_forward

    settings = settings or CalibrationSection()
    state = get_state(model)
    start = time.perf_counter()
    count = collect_statistics(
        model, state, batches, forward or default_forward, settings.batches, show_progress
    )
    count = _merge_across_ranks(state, count)
    summary = finish_calibration(state, settings)
    return CalibrationResult(batches=count, seconds=time.perf_counter() - start, amax=summary)
