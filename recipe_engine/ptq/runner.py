"""Run a list of PTQ steps on a calibrated model: from a recipe's ``ptq:`` or given from Python."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from torch import nn

from .. import data as data_mod
from ..quant import backend
from ..quant.apply import QuantState
from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe, as_loaded
from ..recipe.schema import CalibrationSection, Recipe
from ..select import resolve_type
from .context import PtqContext, batch_limit
from .registry import STEPS, lookup


def _settings(step: Any, index: int) -> BaseModel:
    """A step's settings object from a settings model instance or a mapping with ``step:``."""
    name = step.get("step") if isinstance(step, dict) else getattr(step, "step", None)
    entry = lookup(name) if isinstance(name, str) else None
    if entry is None:
        raise RecipeError(f"ptq[{index}].step: {STEPS.unknown(name)}", hint=f"register a step with {STEPS.how_to_register}")
    if isinstance(step, entry.settings):
        return step
    raw = step if isinstance(step, dict) else step.model_dump()
    try:
        return entry.settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecipeError(f"ptq[{index}].{where}: {first['msg']}") from None


def run(model: nn.Module, recipe_or_steps: LoadedRecipe | Recipe | str | dict | Sequence,
        batches: Iterable | None = None, forward: Callable | None = None, *,
        calibration: CalibrationSection | None = None, show_progress: bool = True) -> list[dict]:
    """Run PTQ steps on a quantized, calibrated ``model`` in place; returns one record per step.

    ``recipe_or_steps``: a recipe (its ``ptq:`` list, data and calibration settings are used), or a
    list of step settings (``{"step": "adaround", "iterations": 100}`` or settings model instances).
    Without ``batches``/``forward`` a recipe's ``data.calibration``/``data.forward`` are used.
    ``calibration`` (default: the recipe's, else the defaults) says how amax values that a step
    recomputes are chosen.
    """
    loaded = None
    block_types: tuple[type, ...] = ()
    if isinstance(recipe_or_steps, (list, tuple)):
        steps = [_settings(step, i) for i, step in enumerate(recipe_or_steps)]
        forward = forward or data_mod.default_forward
    else:
        loaded = as_loaded(recipe_or_steps)
        spec = loaded.spec
        with loaded.located():
            steps = [_settings(step, i) for i, step in enumerate(spec.ptq)]
        batches = data_mod.recipe_batches(loaded, batches)
        forward = data_mod.recipe_forward(loaded, forward)
        calibration = calibration or spec.calibration
        block_types = tuple(resolve_type(entry.block) for entry in spec.fuse if entry.block)
    if not steps:
        return []
    if batches is None:
        raise RecipeError("ptq: pass batches= (the recipe has no data.calibration)")
    calibration = calibration or CalibrationSection()
    needed = max([s.batches for s in steps] + [calibration.batches or 0])
    data = batch_limit(batches, needed) if not isinstance(batches, list) else batches[:max(needed, 1)]
    if not data:
        raise RecipeError("ptq: the calibration data is empty")
    ctx = PtqContext(model, data, forward, calibration, block_types, show_progress)
    ctx.refresh_reference()
    records = []
    located = loaded.located if loaded is not None else contextlib.nullcontext
    for index, settings in enumerate(steps):
        ctx.label = f"ptq[{index}]"
        entry = lookup(settings.step)
        tick = time.perf_counter()
        with located():
            summary = entry.runner()(ctx, settings)
        records.append({"step": settings.step, "seconds": round(time.perf_counter() - tick, 3), **summary})
    return records


def refresh_amax_summary(state: QuantState, summary: dict[str, dict]) -> None:
    """Update a calibration summary's ``amax_min``/``amax_max`` after steps that chose new amax values."""
    for names, quantizer in state.unique():
        entry = summary.get(names[0])
        amax = backend.get_amax(quantizer)
        if entry is not None and amax is not None:
            flat = amax.flatten().float()
            entry["amax_min"], entry["amax_max"] = float(flat.min()), float(flat.max())
