"""The steps of a recipe run, each callable on its own from Python.

``apply`` (fuse + quantize), ``calibrate`` (statistics + amax + disable), ``prepare`` (both),
``save_quantized``/``load_quantized`` and ``run_recipe`` (the whole ``recipe run``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as data_mod
from .calib.loop import CalibrationResult
from .calib.loop import calibrate as _calibrate_state
from .quant import backend
from .quant.apply import QuantState, apply_quantization, disable_matching, get_state, plan_quantization
from .recipe.errors import RecipeError
from .recipe.loader import LoadedRecipe, as_loaded, load_recipe, load_recipe_data  # noqa: F401 - as_loaded re-exported
from .recipe.lock import lock_text
from .recipe.schema import Recipe
from .util.atomic import atomic_save, atomic_write_text

MODEL_FILE_FORMAT = "recipe-engine/model/1"


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


def apply(model: nn.Module, recipe: LoadedRecipe | Recipe | str | dict, batches: Iterable | None = None,
          forward: Callable | None = None, op_sites: dict[str, list[str]] | None = None) -> QuantState:
    """Fuse (phase before_calibration) and insert quantizers into ``model`` in place.

    ``batches`` (calibration data) is needed once to discover op sites when the recipe has
    ``ops:`` rules; ``op_sites`` from a saved model replaces that discovery.
    """
    from .fuse import apply_fusions

    loaded = as_loaded(recipe)
    forward = forward or data_mod.default_forward
    fused = apply_fusions(model, loaded.spec, phase="before_calibration")
    state = apply_quantization(model, loaded.spec, op_sites=op_sites,
                               run_forward=_first_batch_runner(model, batches, forward))
    state.fused = fused
    return state


def calibrate(model: nn.Module, recipe: LoadedRecipe | Recipe | str | dict, batches: Iterable,
              forward: Callable | None = None, show_progress: bool = True) -> CalibrationResult:
    """Collect statistics on ``batches``, set every amax, then switch off the recipe's ``disable`` list."""
    loaded = as_loaded(recipe)
    result = _calibrate_state(model, batches, loaded.spec.calibration, forward, show_progress)
    disable_matching(get_state(model), loaded.spec.disable)
    return result


def prepare(model: nn.Module, recipe: LoadedRecipe | Recipe | str | dict, batches: Iterable,
            forward: Callable | None = None) -> nn.Module:
    """Fused, quantized and calibrated ``model`` (in place), ready for a user's own training loop."""
    loaded = as_loaded(recipe)
    apply(model, loaded, batches, forward)
    calibrate(model, loaded, batches, forward)
    return model


# ----------------------------------------------------------------------------- save / load
def save_quantized(model: nn.Module, path: str | os.PathLike, recipe: LoadedRecipe | Recipe) -> None:
    """Write ``model.pt``: state dict with amax buffers, op sites, disabled set and the recipe lock."""
    loaded = as_loaded(recipe)
    state = get_state(model)
    payload = {
        "format": MODEL_FILE_FORMAT,
        "lock": lock_text(loaded.spec),
        "sha256": loaded.sha256,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "op_sites": state.op_sites,
        "disabled": list(state.disabled),
    }
    atomic_save(path, lambda tmp: torch.save(payload, tmp))


def _recipe_from_lock(text: str) -> LoadedRecipe:
    with tempfile.NamedTemporaryFile("w", suffix=".lock.yaml", delete=False) as handle:
        handle.write(text)
    try:
        return load_recipe(handle.name)
    finally:
        os.unlink(handle.name)


def load_quantized(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a quantized model from ``model.pt`` without calibrating and without a GPU.

    The recipe lock inside the file is re-applied to ``model`` (or to a fresh model from the
    recipe's factory), then the saved weights and amax values are loaded.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such file") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise RecipeError(f"{path}: not a recipe-engine model file (format {MODEL_FILE_FORMAT})")
    loaded = _recipe_from_lock(payload["lock"])
    if model is None:
        spec = loaded.spec
        if spec.model is None:
            raise RecipeError(f"{path}: the recipe has no model factory; pass model=")
        from .util.imports import import_callable

        model = import_callable(spec.model.factory, what="model.factory")(**spec.model.kwargs)
    apply(model, loaded, op_sites=payload["op_sites"])
    state = get_state(model)
    backend.load_state_dict(model, payload["state_dict"], strict=True, backend=state.backend)  # amax on CPU
    for name in payload["disabled"]:
        if name in state.quantizers:
            backend.set_enabled(state.quantizers[name], False)
    state.disabled = list(payload["disabled"])
    model.eval()
    return model


# ----------------------------------------------------------------------------- plan
@dataclass
class PlanResult:
    recipe: str
    version: str
    factories: list[str]
    rules: list[dict] = field(default_factory=list)
    fusions: list[dict] = field(default_factory=list)
    quantizers: dict[str, dict] = field(default_factory=dict)
    shares: list[list[str]] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("recipe", "version", "factories", "rules", "fusions", "quantizers",
                                               "shares", "disabled")}

    def format(self) -> str:
        lines = [f"recipe {self.recipe} {self.version}", "code it runs: " + ", ".join(self.factories), ""]
        lines.append("fusions:")
        for fusion in self.fusions:
            lines.append(f"  [{fusion['entry']}] {fusion['phase']}: {fusion['kind']} {' + '.join(fusion['modules'])}")
        if not self.fusions:
            lines.append("  (none)")
        lines.append("rules:")
        for rule in self.rules:
            lines.append(f"  rules[{rule['index']}] selects {len(rule['matches'])}: {_short(rule['matches'])}")
        lines.append(f"quantizers ({len(self.quantizers)}):")
        for name, info in self.quantizers.items():
            axis = "" if info["axis"] is None else f" axis={info['axis']}"
            flag = "" if info["enabled"] else "  [disabled]"
            lines.append(f"  {name}: int{info['num_bits']}{axis} {info['calibrator']}{flag}")
        lines.append("share groups:")
        lines += [f"  {' = '.join(group)}" for group in self.shares] or ["  (none)"]
        lines.append(f"disabled ({len(self.disabled)}): {_short(self.disabled)}")
        return "\n".join(lines)


def _short(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


def plan_recipe(loaded: LoadedRecipe) -> PlanResult:
    """Build the model in memory and report every selection; writes nothing to disk."""
    model = data_mod.build_model(loaded)
    batches = data_mod.make_data(loaded, "calibration") if loaded.spec.data else None
    forward = data_mod.forward_fn(loaded)
    selections = plan_quantization(model, loaded.spec).rule_matches  # what the selectors see, before fusion
    state = apply(model, loaded, batches, forward)
    disable_matching(state, loaded.spec.disable)
    result = PlanResult(loaded.spec.recipe, loaded.spec.version, loaded.spec.factories())
    result.rules = [{"index": i, "matches": m} for i, m in enumerate(selections)]
    result.fusions = [f.as_dict() for f in state.fused]
    result.quantizers = {name: backend.quantizer_summary(q) for name, q in state.quantizers.items()}
    result.shares = state.groups
    result.disabled = state.disabled
    return result


# ----------------------------------------------------------------------------- run
def _check_supported(loaded: LoadedRecipe) -> None:
    """Fail before any work when the recipe asks for a step this version cannot run."""
    import importlib.util

    for section, module in (("qat", "recipe_engine.train.qat"), ("export", "recipe_engine.export.runner")):
        if getattr(loaded.spec, section) and importlib.util.find_spec(module) is None:
            raise loaded.error((section,), f"`{section}:` is not supported by this version of recipe-engine yet",
                               hint=f"remove the `{section}:` section or run with --set {section}=null")


def run_recipe(loaded: LoadedRecipe, out_dir: str | os.PathLike, show_progress: bool = True,
               resume: bool | None = None) -> dict:
    """The whole ``recipe run``: returns the metrics written to ``metrics.json``.

    Under torchrun every rank runs it (calibrating and training its shard); rank 0 alone writes
    files. ``resume`` is passed to QAT (None: resume from a checkpoint of the same recipe if any).
    """
    from .train import distributed

    created = distributed.init_from_env()
    try:
        return _run_recipe(loaded, out_dir, show_progress, resume)
    finally:
        distributed.shutdown(created)


def _run_recipe(loaded: LoadedRecipe, out_dir: str | os.PathLike, show_progress: bool,
                resume: bool | None) -> dict:
    from .train import distributed

    _check_supported(loaded)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = loaded.spec
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if distributed.is_main():
        atomic_write_text(out / "recipe.lock.yaml", lock_text(spec, [str(f) for f in loaded.files]))

    model = data_mod.build_model(loaded)
    calib_batches = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)
    evaluate = data_mod.evaluate_fn(loaded)
    metrics: dict[str, Any] = {"recipe": spec.recipe, "version": spec.version, "sha256": loaded.sha256}

    val_batches = None
    if evaluate is not None:
        val_batches = data_mod.make_data(loaded, "validation")
        tick = time.perf_counter()
        metrics["fp32"] = data_mod.run_evaluate(evaluate, model, val_batches)
        timings["evaluate_fp32_seconds"] = time.perf_counter() - tick

    tick = time.perf_counter()
    state = apply(model, loaded, calib_batches, forward)
    timings["apply_seconds"] = time.perf_counter() - tick
    shard = distributed.calibration_shard(model, calib_batches, spec.calibration.batches, forward)
    result = calibrate(model, loaded, shard, forward, show_progress)
    metrics["calibration_seconds"] = result.seconds
    metrics["calibration_batches"] = result.batches

    if evaluate is not None:
        tick = time.perf_counter()
        metrics["int8"] = data_mod.run_evaluate(evaluate, model, val_batches)
        timings["evaluate_int8_seconds"] = time.perf_counter() - tick

    if spec.tune is not None:
        from .analyze.tune import run_tune

        tick = time.perf_counter()
        metrics["tune"] = run_tune(model, loaded, out, calib_batches, val_batches, forward, evaluate,
                                   metrics.get("fp32"))
        metrics["int8"] = data_mod.run_evaluate(evaluate, model, val_batches)
        timings["tune_seconds"] = time.perf_counter() - tick
        state.disabled = sorted(set(state.disabled) | set(metrics["tune"]["disabled_quantizers"]))

    if spec.qat is not None:
        from .train.qat import run_qat

        qat_metrics = run_qat(model, loaded, out, forward=forward, evaluate=evaluate, val_batches=val_batches,
                              resume=resume, show_progress=show_progress)
        metrics.update(qat_metrics)
    if not distributed.is_main():
        return metrics  # rank 0 alone writes the model, exports, metrics and report

    save_quantized(model, out / "model.pt", loaded)
    metrics["quantizers"] = state.enabled_count()
    metrics["disabled"] = len({id(state.quantizers[n]) for n in state.disabled})
    metrics["shared_groups"] = len(state.groups)
    metrics["fused"] = len(state.fused)
    metrics["amax"] = result.amax

    exports: list[dict] = []
    if spec.export:
        from .export.runner import run_exports

        tick = time.perf_counter()
        exports = run_exports(model, loaded, out, calib_batches, forward)
        timings["export_seconds"] = time.perf_counter() - tick
    metrics["exports"] = exports
    timings["total_seconds"] = time.perf_counter() - started
    metrics["timings"] = timings
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    from .analyze.report import write_report

    write_report(model, loaded, out, metrics, next(iter(calib_batches)), forward)
    return metrics
