"""This engine's rows: FP32, INT8 per calibration method, each PTQ step, mixed precision, ``tune:`` and QAT.

PTQ rows go through the Python API (``apply`` -> ``calibrate`` -> ``ptq.runner.run``) on the recipe loaded
with the row's ``--set`` overrides, so that FP32 is evaluated once per model rather than once per row
(the evaluation splits do not depend on the calibration seed). ``tune:`` and QAT rows go through
``recipe_engine.pipeline.run_recipe`` (exports off) and read ``metrics.json``'s figures. Time: wall seconds
of fuse/quantize + calibration + PTQ (+ tuning or fine-tuning), never evaluation.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import Measure, Timer, log, quiet
from .models import ModelSpec, Settings


@dataclass
class EvalData:
    """A model's evaluation splits, built once: validation (selection) and test (held out, when the recipe has it)."""

    spec: ModelSpec
    loaded: Any  # the base LoadedRecipe (exports off, quick sizes)
    validation: Any
    test: Any | None
    evaluate: Any
    forward: Any

    def measure(self, model: nn.Module, seconds: float | None, note: str = "") -> Measure:
        """``model`` on both splits; a recipe without ``data.test`` reports its one split as test."""
        from recipe_engine import data as data_mod

        val = data_mod.run_evaluate(self.evaluate, model, self.validation)[self.spec.metric]
        if self.test is None:
            return Measure(val, None, seconds, note)
        test = data_mod.run_evaluate(self.evaluate, model, self.test)[self.spec.metric]
        return Measure(test, val, seconds, note)


_EVAL: dict[str, EvalData] = {}


def eval_data(spec: ModelSpec, settings: Settings) -> EvalData:
    """The cached :class:`EvalData` of ``spec``."""
    if spec.name not in _EVAL:
        from recipe_engine import data as data_mod
        from recipe_engine.recipe import load_recipe

        loaded = load_recipe(spec.recipe, settings.base(spec))
        has_test = loaded.spec.data.test is not None
        validation = list(data_mod.make_data(loaded, "validation"))
        test = list(data_mod.make_data(loaded, "test")) if has_test else None
        _EVAL[spec.name] = EvalData(spec, loaded, validation, test, data_mod.evaluate_fn(loaded),
                                    data_mod.forward_fn(loaded))
    return _EVAL[spec.name]


def fp32(spec: ModelSpec, settings: Settings) -> Measure:
    """The FP32 model (the recipe's own factory and checkpoint)."""
    from recipe_engine import data as data_mod

    data = eval_data(spec, settings)
    torch.manual_seed(0)
    return data.measure(data_mod.build_model(data.loaded), None)


def load(spec: ModelSpec, settings: Settings, overrides: list[str], seed: int, recipe: Path | None = None) -> Any:
    """The recipe (default the plain one) with the base, seed and row overrides."""
    from recipe_engine.recipe import load_recipe

    return load_recipe(recipe or spec.recipe, settings.base(spec) + settings.seed(seed) + overrides)


def ptq_row(spec: ModelSpec, settings: Settings, overrides: list[str], seed: int,
            recipe: Path | None = None) -> Measure:
    """Fuse + quantize + calibrate (+ the recipe's ``ptq:`` steps) with the Python API, then evaluate."""
    from recipe_engine import data as data_mod
    from recipe_engine.pipeline import apply, calibrate
    from recipe_engine.ptq.runner import run as run_ptq

    loaded = load(spec, settings, overrides, seed, recipe)
    data = eval_data(spec, settings)
    torch.manual_seed(0)
    model = data_mod.build_model(loaded)
    calib = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)
    timer = Timer()
    with quiet(), timer:
        state = apply(model, loaded, calib, forward)
        calibrate(model, loaded, calib, forward, show_progress=False)
        if loaded.spec.ptq:
            run_ptq(model, loaded, calib, forward, show_progress=False)
    note = f"{state.enabled_count()} quantizers"
    return data.measure(model, timer.seconds, note)


def recipe_row(spec: ModelSpec, settings: Settings, overrides: list[str], seed: int, phase: str,
               recipe: Path | None = None) -> Measure:
    """``run_recipe`` (exports off) and its ``phase`` figures (``int8`` after ``tune:``, or ``qat``)."""
    from recipe_engine.pipeline import run_recipe

    loaded = load(spec, settings, overrides, seed, recipe)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="accbench-") as tmp, quiet():
        metrics = run_recipe(loaded, Path(tmp) / "run", show_progress=False)
    timings = metrics.get("timings", {})
    seconds = (timings.get("apply_seconds", 0.0) + metrics.get("calibration_seconds", 0.0)
               + timings.get("ptq_seconds", 0.0) + timings.get("tune_seconds", 0.0) + metrics.get("qat_seconds", 0.0))
    if "test" in metrics:
        test, val = metrics["test"][phase][spec.metric], metrics["validation"][phase][spec.metric]
    else:
        test, val = metrics[phase][spec.metric], None
    note = f"{metrics.get('quantizers', '-')} quantizers"
    if phase == "int8" and "tune" in metrics:
        disabled = metrics["tune"].get("disabled_quantizers", [])
        shown = ", ".join(disabled[:4]) + (" ..." if len(disabled) > 4 else "")
        note += f", tune disabled {len(disabled)}" + (f": {shown}" if disabled else "")
    if phase == "qat":
        note += f", {metrics.get('qat_steps', '-')} steps"
    log(f"  {spec.name}: run_recipe {phase}: {test} / {val} ({seconds:.1f} s)")
    return Measure(test, val, seconds, note)
