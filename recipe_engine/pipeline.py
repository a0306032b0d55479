"""The steps of a recipe run, each callable on its own from Python.

``apply`` (fuse + quantize), ``calibrate`` (statistics + amax + disable), ``prepare`` (both),
``save_quantized``/``load_quantized`` and ``run_recipe`` (the whole ``recipe run``).

Over the ~400-line guide (463): the public API steps and the run that strings them together
live here together; save/load and plan are the next to move into modules of their own.
"""

from __future__ import annotations

import contextlib
import copy
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
from .console import NullStory, figures
from .quant import backend
from .quant.apply import QuantState, apply_quantization, disable_matching, get_state, plan_quantization
from .recipe.errors import RecipeError
from .recipe.loader import LoadedRecipe, as_loaded, load_recipe, load_recipe_data  # noqa: F401 - as_loaded re-exported
from .recipe.lock import lock_text
from .recipe.schema import Recipe
from .util.atomic import atomic_save, atomic_write_text, confined
from .util.imports import imports_refused
from .util.progress import with_bar
from .util.rundir import RunDirectory, RunRecord, open_for_recipe, record_failure

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
    ``ops:`` rules; ``op_sites`` from a saved model replaces that discovery. Without ``batches``
    the recipe's ``data.calibration`` is used, without ``forward`` its ``data.forward``.
    """
    loaded = as_loaded(recipe)
    if op_sites is None:
        batches = data_mod.recipe_batches(loaded, batches)
    return _apply(model, loaded, batches, data_mod.recipe_forward(loaded, forward), op_sites)


def _apply(model: nn.Module, loaded: LoadedRecipe, batches: Iterable | None, forward: Callable,
           op_sites: dict[str, list[str]] | None) -> QuantState:
    from .fuse import apply_fusions

    with loaded.located():
        fused = apply_fusions(model, loaded.spec, phase="before_calibration")
        state = apply_quantization(model, loaded.spec, op_sites=op_sites,
                                   run_forward=_first_batch_runner(model, batches, forward))
    state.fused = fused
    return state


def calibrate(model: nn.Module, recipe: LoadedRecipe | Recipe | str | dict, batches: Iterable | None = None,
              forward: Callable | None = None, show_progress: bool = True) -> CalibrationResult:
    """Collect statistics on ``batches``, set every amax, then switch off the recipe's ``disable`` list.

    Without ``batches`` the recipe's ``data.calibration`` is used, without ``forward`` its ``data.forward``.
    """
    loaded = as_loaded(recipe)
    batches = data_mod.recipe_batches(loaded, batches)
    if batches is None:
        raise RecipeError("calibrate: pass batches= (the recipe has no data.calibration)")
    result = _calibrate_state(model, batches, loaded.spec.calibration, data_mod.recipe_forward(loaded, forward),
                              show_progress)
    with loaded.located():
        disable_matching(get_state(model), loaded.spec.disable)
    return result


def prepare(model: nn.Module, recipe: LoadedRecipe | Recipe | str | dict, batches: Iterable | None = None,
            forward: Callable | None = None) -> nn.Module:
    """Fused, quantized and calibrated ``model`` (in place), ready for a user's own training loop.

    Without ``batches``/``forward`` the recipe's ``data.calibration``/``data.forward`` are used.
    """
    loaded = as_loaded(recipe)
    batches = data_mod.recipe_batches(loaded, batches)
    forward = data_mod.recipe_forward(loaded, forward)
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


def read_model_file(path: str | os.PathLike) -> dict:
    """The payload of a ``model.pt`` (tensors and strings only: ``weights_only=True``), format checked."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is the file's fault
        raise RecipeError(f"{path}: cannot read it with weights_only=True: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise RecipeError(f"{path}: not a recipe-engine model file (format {MODEL_FILE_FORMAT})")
    return payload


def load_quantized(path: str | os.PathLike, model: nn.Module | None = None, *,
                   factory: Callable[[], nn.Module] | None = None, trust_recipe: bool = False) -> nn.Module:
    """Rebuild a quantized model from ``model.pt`` without calibrating and without a GPU.

    Loading a file never imports or calls anything the file names: pass the FP32 model (``model=``)
    or a callable that builds it (``factory=``). The recipe lock inside the file is re-applied to it
    (fusions, quantizers, share groups), then the saved weights and amax values are loaded. The
    lock's selector and fusion types may only name modules that are already imported (your model's
    own classes are) or the engine's own packages; any other module is refused, not imported.
    ``trust_recipe=True`` lifts both rules for a file you trust: the model is built by calling the
    lock's ``model.factory`` and the lock may import what it names; what it will import is logged first.
    """
    payload = read_model_file(path)
    loaded = _recipe_from_lock(payload["lock"])
    spec = loaded.spec
    if trust_recipe:
        import logging

        logging.getLogger("recipe_engine").warning(
            "load_quantized(%s, trust_recipe=True) may import and run: %s", path, ", ".join(spec.factories()) or "-")
    if model is None and factory is not None:
        model = factory()
    if model is None:
        if not trust_recipe:
            named = f" (its recipe names model.factory {spec.model.factory})" if spec.model else ""
            raise RecipeError(f"{path}: pass the model to rebuild{named}",
                              hint="load_quantized(path, model=build_my_model()) or factory=build_my_model; "
                                   "trust_recipe=True calls the file's own factory (only for files you trust)")
        if spec.model is None:
            raise RecipeError(f"{path}: the recipe has no model factory; pass model=")
        from .util.imports import import_callable

        model = import_callable(spec.model.factory, what="model.factory")(**spec.model.kwargs)
    if not isinstance(model, nn.Module):
        raise RecipeError(f"{path}: model= must be an nn.Module, got {type(model).__name__}")
    guard = contextlib.nullcontext() if trust_recipe else imports_refused(f"{path}'s recipe")
    with guard:
        _apply(model, loaded, None, data_mod.default_forward, payload["op_sites"])
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
    with loaded.located():
        selections = plan_quantization(model, loaded.spec).rule_matches  # what the selectors see, before fusion
    state = apply(model, loaded, batches, forward)
    with loaded.located():
        disable_matching(state, loaded.spec.disable)
    result = PlanResult(loaded.spec.recipe, loaded.spec.version, loaded.spec.factories())
    result.rules = [{"index": i, "matches": m} for i, m in enumerate(selections)]
    result.fusions = [f.as_dict() for f in state.fused]
    result.quantizers = {name: backend.quantizer_summary(q) for name, q in state.quantizers.items()}
    result.shares = state.groups
    result.disabled = state.disabled
    if loaded.spec.export:
        from .export.precheck import check_exports

        check_exports(model, loaded, batches, forward)  # fails here, located, when not exportable
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
               resume: bool | None = None, overwrite: bool = False, story: Any = None) -> dict:
    """The whole ``recipe run``: returns the metrics written to ``metrics.json``.

    The run is built in a staging directory next to ``out_dir`` and moved into place when it
    completes (``util/rundir.py``); a failed run leaves ``<out_dir>.failed`` instead. Under torchrun
    every rank runs it (calibrating and training its shard); rank 0 alone writes files. ``resume`` is
    passed to QAT (None: resume from a checkpoint of the same recipe if any). ``overwrite`` allows
    replacing a QAT checkpoint of another recipe. ``story`` (a :class:`recipe_engine.console.Story`)
    is told each stage as it starts and its key figures; it prints a line per stage.
    """
    from .train import distributed

    created = distributed.init_from_env()
    try:
        run_dir = RunDirectory(out_dir)
        problem = None
        if distributed.is_main():
            try:
                _check_supported(loaded)
                open_for_recipe(run_dir, loaded, resume, overwrite)
            except RecipeError as exc:
                problem = exc
        problem = distributed.broadcast_object(problem)
        if problem is not None:
            raise problem
        record = RunRecord()
        try:
            with confined(run_dir.staging):
                metrics = _run_recipe(loaded, run_dir.staging, show_progress, resume, record, story)
            if distributed.is_main():
                run_dir.commit()  # while still holding the lock
        except BaseException as exc:
            if story is not None:
                story.failed(exc)
            if distributed.is_main():
                record_failure(run_dir, loaded, record, exc)
                if story is not None:
                    story.failure_summary(record.metrics, run_dir.failed)
            raise
        finally:
            if distributed.is_main():
                run_dir.close()
        return metrics
    finally:
        distributed.shutdown(created)


def _run_recipe(loaded: LoadedRecipe, out: Path, show_progress: bool, resume: bool | None,
                record: RunRecord, story: Any = None) -> dict:
    from .train import distributed

    story = story or NullStory()

    def stage(name: str) -> None:
        record.stage = name
        story.begin(name)

    spec = loaded.spec
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if distributed.is_main():
        atomic_write_text(out / "recipe.lock.yaml", lock_text(spec, [str(f) for f in loaded.files]))

    stage("model")
    model = data_mod.build_model(loaded)
    stage("data")
    calib_batches = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)
    evaluate = data_mod.evaluate_fn(loaded)
    if spec.export:
        from .export.precheck import check_exports

        stage("export_check")
        probe = copy.deepcopy(model)  # the run goes on with the untouched model
        _apply(probe, loaded, calib_batches, forward, None)
        check_exports(probe, loaded, calib_batches, forward)  # before any calibration
        del probe
    metrics: dict[str, Any] = record.metrics
    metrics.update({"recipe": spec.recipe, "version": spec.version, "sha256": loaded.sha256})
    metrics["timings"] = timings

    val_batches = None
    if evaluate is not None:
        stage("evaluate_fp32")
        val_batches = data_mod.make_data(loaded, "validation")
        tick = time.perf_counter()
        metrics["fp32"] = data_mod.run_evaluate(evaluate, model, with_bar(val_batches, "FP32", show_progress))
        timings["evaluate_fp32_seconds"] = time.perf_counter() - tick
        story.detail(figures(metrics["fp32"]))

    stage("apply")
    tick = time.perf_counter()
    state = apply(model, loaded, calib_batches, forward)
    timings["apply_seconds"] = time.perf_counter() - tick
    story.detail(f"fusions {len(state.fused)} / quantizers {state.enabled_count()}")
    stage("calibration")
    shard = distributed.calibration_shard(model, calib_batches, spec.calibration.batches, forward)
    result = calibrate(model, loaded, shard, forward, show_progress)
    metrics["calibration_seconds"] = result.seconds
    metrics["calibration_batches"] = result.batches
    story.detail(f"{result.batches} batches, {spec.calibration.method}")
    if spec.ptq:
        from .ptq.runner import refresh_amax_summary
        from .ptq.runner import run as run_ptq

        stage("ptq")  # every rank runs the same steps on the same (unsharded) batches: identical weights
        tick = time.perf_counter()
        metrics["ptq"] = run_ptq(model, loaded, calib_batches, forward, show_progress=show_progress)
        refresh_amax_summary(state, result.amax)  # range_search and cle choose new amax values
        timings["ptq_seconds"] = time.perf_counter() - tick
        story.detail(", ".join(step["step"] for step in metrics["ptq"]))

    def summarize() -> None:
        metrics["quantizers"] = state.enabled_count()
        metrics["disabled"] = len({id(state.quantizers[n]) for n in state.disabled})
        metrics["shared_groups"] = len(state.groups)
        metrics["fused"] = len(state.fused)
        metrics["amax"] = result.amax

    def report() -> Any:
        from .analyze.report import write_report

        summarize()
        return write_report(model, loaded, out, metrics, next(iter(calib_batches)), forward)

    summarize()
    record.report = report
    if evaluate is not None:
        stage("evaluate_int8")
        tick = time.perf_counter()
        metrics["int8"] = data_mod.run_evaluate(evaluate, model, with_bar(val_batches, "INT8", show_progress))
        timings["evaluate_int8_seconds"] = time.perf_counter() - tick
        story.detail(figures(metrics["int8"]))

    if spec.tune is not None:
        from .analyze.tune import run_tune

        stage("tune")
        tick = time.perf_counter()
        metrics["tune"] = run_tune(model, loaded, out, calib_batches, val_batches, forward, evaluate,
                                   metrics.get("fp32"))
        metrics["int8"] = data_mod.run_evaluate(evaluate, model, val_batches)
        timings["tune_seconds"] = time.perf_counter() - tick
        state.disabled = sorted(set(state.disabled) | set(metrics["tune"]["disabled_quantizers"]))
        story.detail(f"disabled {len(metrics['tune']['disabled_quantizers'])}, INT8 {figures(metrics['int8'])}")

    if spec.qat is not None:
        from .train.qat import run_qat

        stage("qat")
        qat_metrics = run_qat(model, loaded, out, forward=forward, evaluate=evaluate, val_batches=val_batches,
                              resume=resume, show_progress=show_progress)
        metrics.update(qat_metrics)
        story.detail(f"{metrics.get('qat_steps')} steps")
        if isinstance(metrics.get("qat_loss"), dict):
            story.detail(f"loss {metrics['qat_loss']['first']:.4g} -> {metrics['qat_loss']['last']:.4g}")
        if isinstance(metrics.get("qat"), dict):
            story.detail(figures(metrics["qat"]))
    if not distributed.is_main():
        return metrics  # rank 0 alone writes the model, exports, metrics and report

    stage("layer_sqnr")  # the final model's per-layer output SQNR vs FP32 (metrics.json and the report)
    from .analyze.layers import describe, measure_layers

    tick = time.perf_counter()
    layers = measure_layers(model, next(iter(calib_batches)), forward)
    metrics["layer_sqnr"] = [item.as_dict() for item in layers]
    timings["layer_sqnr_seconds"] = time.perf_counter() - tick
    story.detail(describe(layers))
    stage("save")
    save_quantized(model, out / "model.pt", loaded)
    summarize()
    story.detail("model.pt")

    exports: list[dict] = []
    metrics["exports"] = exports  # filled entry by entry: a failed run keeps the figures of those done
    if spec.export:
        from .export.runner import run_exports

        stage("export")
        tick = time.perf_counter()
        run_exports(model, loaded, out, calib_batches, forward,
                    on_result=lambda result: (exports.append(result), story.export(result)))
        timings["export_seconds"] = time.perf_counter() - tick
        story.detail(f"{len(exports)} entries")
    timings["total_seconds"] = time.perf_counter() - started
    metrics["status"] = "ok"
    stage("report")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    report()
    story.end()
    return metrics

