"""Fuse and insert quantizers for a loaded recipe: the one step ``apply`` and ``load_quantized`` share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from .quant.apply import QuantState, apply_quantization
from .recipe.errors import RecipeError
from .recipe.loader import LoadedRecipe
from .util.gcpause import no_gc_passes


def _first_batch_runner(model: nn.Module, batches: Iterable | None, forward: Callable) -> Callable[[], Any] | None:
    if batches is None:
        return None

    def run() -> Any:
        batch = next(iter(batches), None)
        if batch is None:
            raise RecipeError("calibration data is empty: op sites cannot be discovered")
        was_training = model.training
        model.eval()
        try:
            return forward(model, batch)
        finally:
            model.train(was_training)

    return run


@no_gc_passes
def apply_loaded(model: nn.Module, loaded: LoadedRecipe, batches: Iterable | None, forward: Callable,
                 op_sites: dict[str, list[str]] | None) -> QuantState:
    """Fusions (phase before_calibration) and quantizers; op sites from ``op_sites`` or one batch."""
    from .fuse import apply_fusions

    with loaded.located():
        fused = apply_fusions(model, loaded.spec, phase="before_calibration")
        state = apply_quantization(model, loaded.spec, op_sites=op_sites,
                                   run_forward=_first_batch_runner(model, batches, forward))
    state.fused = fused
    return state
