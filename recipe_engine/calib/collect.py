"""Statistics collection: run batches through a quantized model with its quantizers collecting."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..quant import backend
from ..quant.apply import QuantState
from ..recipe.errors import RecipeError
from ..util.progress import progress
from .histogram import worker


def _batch_error(what: str, exc: BaseException) -> RecipeError:
    hint = ("the batch contains NaN/inf values" if "finite" in str(exc) or "nan" in str(exc)
            else "run the FP32 model on this batch to check the data and the forward adapter")
    return RecipeError(f"{what}: {exc}", hint=hint)


def collect_statistics(
    model: nn.Module,
    state: QuantState,
    batches: Iterable,
    forward: Callable,
    limit: int | None = None,
    show_progress: bool = True,
) -> int:
    """Run up to ``limit`` batches through ``model`` with all quantizers collecting statistics."""
    quantizers = [q for _, q in state.unique() if not state.is_fixed(q)]
    for quantizer in quantizers:
        backend.start_calibration(quantizer)
    was_training = model.training
    model.eval()
    count = 0
    try:
        items = itertools.islice(batches, limit) if limit else batches
        total = limit if limit else (len(batches) if hasattr(batches, "__len__") else None)
        if total is not None and hasattr(batches, "__len__"):
            total = min(total, len(batches))
        with torch.no_grad():
            for batch in progress(items, total=total, description="calibrating", enabled=show_progress):
                try:
                    forward(model, batch)
                except (RuntimeError, ValueError) as exc:
                    raise _batch_error(f"calibration batch {count} failed", exc) from exc
                count += 1
            try:
                worker().wait()  # histograms still being binned in the background (calib/histogram.py)
            except (RuntimeError, ValueError) as exc:
                raise _batch_error(f"calibration batches 0-{count - 1}: binning a histogram failed", exc) from exc
    finally:
        for quantizer in quantizers:
            backend.stop_calibration(quantizer)
        model.train(was_training)
    if count == 0:
        raise RecipeError(
            "calibration saw no batch", hint="check data.calibration: its factory returned no data"
        )
    return count
