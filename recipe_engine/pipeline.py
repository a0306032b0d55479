"""The steps of a recipe run, each callable on its own from Python.

``apply`` (fuse + quantize), ``calibrate`` (statistics + amax + disable), ``prepare`` (both),
``save_quantized``/``load_quantized`` and ``run_recipe`` (the whole ``recipe run``).

``model.pt`` is written and read by :mod:`.model_file`; the shared fuse+quantize step is
:mod:`.application`; ``plan`` is the next to move into a module of its own.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from . import data as data_mod
from .application import apply_loaded
from .calib.loop import CalibrationResult
from .calib.loop import calibrate as _calibrate_state
from .console import NullStory, figures
from .model_file import MODEL_FILE_FORMAT, load_quantized, read_model_file, save_quantized  # noqa: F401 - re-exported
from .quant import backend
from .quant.apply import QuantState, disable_matching, get_state, plan_quantization
from .quant.precision import precision_label
from .recipe.errors import RecipeError
from .recipe.loader import LoadedRecipe, as_loaded, load_recipe, load_recipe_data  # noqa: F401 - as_loaded re-exported
from .recipe.lock import lock_text
from .recipe.schema import Recipe
from .util.atomic import atomic_write_text, confined
from .util.jsonio import json_text, non_finite
from .util.progress import with_bar
from .util.rundir import RunDirectory, RunRecord, open_for_recipe, record_failure


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
    return apply_loaded(model, loaded, batches, data_mod.recipe_forward(loaded, forward), op_sites)


def calibrate(model: nn.Module, recipe: LoadedRecipe | Recipe | str | dict, batches: Iterable | None = None,
              forward: Callable | None = None, show_progress: bool = True) -> CalibrationResult:
    """Collect statistics on ``batches``, set every amax, then switch off the recipe's ``disable`` list.

    Without ``batches`` the recipe's ``data.calibration`` is used, without ``forward`` its ``data.forward``.
    """
    loaded = as_loaded(recipe)
    batches = data_mod.recipe_batches(loaded, batches, reread=False)  # one pass: a generator will do
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
        apply_loaded(probe, loaded, calib_batches, forward, None)
        check_exports(probe, loaded, calib_batches, forward)  # before any calibration
        del probe
    metrics: dict[str, Any] = record.metrics
    metrics.update({"recipe": spec.recipe, "version": spec.version, "sha256": loaded.sha256})
    metrics["timings"] = timings

    splits = None
    if evaluate is not None:
        from .evaluation import SplitEvaluation

        stage("evaluate_fp32")
        splits = SplitEvaluation(loaded, evaluate)  # selection on validation, figures on data.test if set
        tick = time.perf_counter()
        splits.measure(model, metrics, "fp32",
                       lambda b, split: with_bar(b, "FP32" if split == "validation" else "FP32 test", show_progress))
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
        metrics["precision"] = precision_label(state)  # INT8, FP8 E4M3, INT8+FP8 E4M3 (the numbers stay in int8)

    def report() -> Any:
        from .analyze.report import write_report

        summarize()
        return write_report(model, loaded, out, metrics, next(iter(calib_batches)), forward)

    summarize()
    record.report = report
    if evaluate is not None:
        stage("evaluate_int8")
        story.name_stage(f"{metrics['precision']} evaluation")
        tick = time.perf_counter()
        label = metrics["precision"]
        splits.measure(model, metrics, "int8",
                       lambda b, split: with_bar(b, label if split == "validation" else f"{label} test", show_progress))
        timings["evaluate_int8_seconds"] = time.perf_counter() - tick
        story.detail(figures(metrics["int8"]))

    if spec.tune is not None:
        from .analyze.tune import run_tune

        stage("tune")
        tick = time.perf_counter()
        metrics["tune"] = run_tune(model, loaded, out, calib_batches, splits.validation if splits else None, forward,
                                   evaluate, (metrics.get("validation") or metrics).get("fp32"))
        splits.measure(model, metrics, "int8")
        timings["tune_seconds"] = time.perf_counter() - tick
        state.disabled = sorted(set(state.disabled) | set(metrics["tune"]["disabled_quantizers"]))
        story.detail(f"disabled {len(metrics['tune']['disabled_quantizers'])}, {metrics['precision']} "
                     f"{figures(metrics['int8'])}")

    if spec.qat is not None:
        from .train.qat import run_qat

        stage("qat")
        qat_metrics = run_qat(model, loaded, out, forward=forward, evaluate=evaluate,
                              val_batches=splits.validation if splits else None,
                              test_batches=splits.test if splits else None,
                              resume=resume, show_progress=show_progress)
        if splits is not None and "qat" in qat_metrics:  # keep_best chose on validation; report test
            splits.record(metrics, "qat", qat_metrics.pop("qat_validation", qat_metrics["qat"]),
                          qat_metrics["qat"] if splits.test is not None else None)
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
    bad = non_finite(metrics)
    if bad:  # written as null (strict JSON); said once, naming each figure
        story.warn("not finite, written as null in metrics.json: "
                   + ", ".join(f"{path} ({value})" for path, value in bad))
    stage("report")
    atomic_write_text(out / "metrics.json", json_text(metrics, indent=2, sort_keys=False) + "\n")
    report()
    story.end()
    return metrics

