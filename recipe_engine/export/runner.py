"""Run a recipe's ``export:`` entries: one verified artifact per entry in the run directory.

:func:`export` is the public entry point after a user's own training loop;
:func:`run_exports` is what ``recipe run`` calls. Both return one result dict per entry
(``path``, ``format``, ``status``, ``max_abs_diff`` and the other verification figures), which
the pipeline stores under ``exports`` in ``metrics.json``:

- every entry: ``path``, ``format``, ``module``, ``status`` (``ok`` / ``skipped``), ``seconds``;
- every verified entry (see :mod:`.signal_check`): ``sqnr_pytorch_db`` (PyTorch fake-quant vs FP32)
  and ``sqnr_runtime_db`` (the runtime vs FP32) on the same captured inputs, ``sqnr_loss_db``,
  ``systematic_db``, ``margin_db``, and the step figures of the runtime vs PyTorch (step = output
  range / 255): ``max_abs_diff``, ``mean_abs_diff``, ``max_diff_steps``, ``frac_over_1_step``,
  ``rel_error``; per output under ``outputs`` (with ``bias_steps`` and ``gain``);
- ``onnx-qdq``: runtime = onnxruntime; the Q/DQ census, file size/sha256;
- ``onnx-sparse``: runtime = the sparse reference runtime; conv/add counts by precision,
  ``output_bound``, ``max_points``, ``output_axes``, ``notes`` (precision decisions);
- ``tensorrt``: ``trtexec`` (the equivalent command line), ``reason`` when skipped, else runtime =
  TensorRT, ``versus_onnxruntime`` step figures, ``network`` and the engine's ``.json`` side file.

An entry that fails its checks raises a RecipeError located at the entry; it writes no file.
Each entry runs through its format's ``run`` (:mod:`.formats`); the three built-in ones are
:func:`run_qdq`, :func:`run_sparse` and :func:`run_tensorrt` below.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import data as data_mod
from ..quant.apply import get_state
from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe
from ..recipe.schema import Recipe
from . import formats
from . import tensorrt as trt_export
from .artifact import recipe_metadata, save_json, save_onnx, set_metadata
from .calls import check_reads, wrap_call
from .capture import capture, find_module
from .formats import ExportContext
from .onnx_ort import place as place_for_onnxruntime
from .onnx_qdq import export_mode, export_qdq, flatten_outputs, qdq_census
from .onnx_sparse import REVERSE, OutputPlan, build_scn
from .ort_thin import notes as placement_notes
from .ort_verify import check_against_fp32, fused_ops
from .quantizers import check_exportable, qdq_notes, quantizers_off
from .scn_runtime import run_scn as run_sparse_runtime  # the runtime onnx-sparse files are verified with
from .scn_runtime import swap_layout
from .scn_tail import scatter_dense
from .settings import OnnxQdqExport, OnnxSparseExport, TensorRTExport
from .signal_check import problems, signal_figures, summarize_signal
from .sparse_trace import SparseTrace, trace_sparse
from .verify import compare, round_figure, run_onnxruntime, summarize

FUSED_FLAG = "_recipe_export_fused"


@dataclass
class _QdqDone:
    """What a tensorrt entry needs from the onnx-qdq export it builds from."""

    entry: OnnxQdqExport
    model_bytes: bytes
    feeds: dict[str, np.ndarray]
    ort_outputs: list[np.ndarray]
    output_names: list[str]
    pytorch: list[torch.Tensor]  # fake-quant outputs on the same inputs
    fp32: list[torch.Tensor]  # quantizers off


def export(model: nn.Module, recipe: LoadedRecipe | Recipe | str | os.PathLike | dict, out_dir: str | os.PathLike,
           batches: Iterable | None = None, forward: Callable[[nn.Module, Any], Any] | None = None) -> list[dict]:
    """Write and verify every ``export:`` entry of ``recipe`` for a quantized, calibrated ``model``.

    ``batches`` are calibration batches (the first one supplies the exported modules' inputs; default:
    the recipe's ``data.calibration``); ``forward(model, batch)`` runs one (default: the recipe's
    ``data.forward``, else ``model(**batch)`` / ``model(*batch)`` / ``model(batch)``).
    """
    from ..recipe.loader import as_loaded
    from ..util.atomic import confined

    loaded = as_loaded(recipe)
    with confined(out_dir):  # no artifact outside out_dir, whatever the recipe says
        return run_exports(model, loaded, out_dir, data_mod.recipe_batches(loaded, batches),
                           data_mod.recipe_forward(loaded, forward))


def run_exports(model: nn.Module, loaded: LoadedRecipe, out_dir: str | os.PathLike, calib_batches: Iterable,
                forward: Callable[[nn.Module, Any], Any] | None,
                on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """The export step of ``recipe run``; raises RecipeError (located at the entry) when a check fails.

    ``on_result`` is called with each entry's result as soon as it is done (``status: failed`` with the
    ``error`` for the entry that fails, just before the error is raised).
    """
    spec = loaded.spec
    if not spec.export:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    forward = forward or data_mod.default_forward
    state = get_state(model)  # fails clearly for a model that was never quantized
    fuse_before_export(model, loaded)
    _check_modules(model, loaded)
    kinds = [formats.get(e.format) for e in spec.export]  # every format of the recipe is registered (validation)
    dense = [e.module or "" for e, f in zip(spec.export, kinds, strict=True) if f.capture == "inputs"]
    sparse_paths = [e.module or "" for e, f in zip(spec.export, kinds, strict=True) if f.capture == "sparse"]
    captured = capture(model, calib_batches, forward, dense + sparse_paths, sparse_paths,
                       count_batches=spec.calibration.batches, counting_context=lambda: quantizers_off(state))
    context = ExportContext(model, loaded, captured, out, state)
    results: list[dict] = []
    for index, (entry, kind) in enumerate(zip(spec.export, kinds, strict=True)):
        tick = time.perf_counter()
        try:
            result = kind.runner()(context, entry)
        except RecipeError as exc:
            if on_result is not None:
                on_result({**context.base(entry), "status": "failed", "error": exc.headline,
                           "seconds": round(time.perf_counter() - tick, 3)})
            raise loaded.error(("export", index), f"{entry.path}: {exc.headline}", hint=exc.hint) from None
        result["seconds"] = round(time.perf_counter() - tick, 3)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def fuse_before_export(model: nn.Module, loaded: LoadedRecipe) -> None:
    """Apply ``fuse`` entries with ``phase: before_export`` once per model."""
    if not any(f.phase == "before_export" for f in loaded.spec.fuse) or model.__dict__.get(FUSED_FLAG):
        return
    from ..fuse import apply_fusions

    with loaded.located():
        apply_fusions(model, loaded.spec, phase="before_export")
    model.__dict__[FUSED_FLAG] = True


def _check_modules(model: nn.Module, loaded: LoadedRecipe) -> None:
    for index, entry in enumerate(loaded.spec.export):
        if entry.module:
            try:
                find_module(model, entry.module)
            except RecipeError as exc:
                raise loaded.error(("export", index, "module"), exc.headline, hint=exc.hint) from None


# ----------------------------------------------------------------------------- onnx-qdq
def run_qdq(ctx: ExportContext, entry: OnnxQdqExport) -> dict:
    """The ``onnx-qdq`` format's run (registered in :mod:`.settings.onnx_qdq`)."""
    model, loaded, captured, out = ctx.model, ctx.loaded, ctx.captured, ctx.out
    done: dict[str, _QdqDone] = ctx.shared.setdefault("onnx-qdq", {})  # what tensorrt entries build from
    path = entry.module or ""
    module = find_module(model, path)
    check_exportable(get_state(model), path, f"onnx-qdq {entry.path}")
    notes = qdq_notes(get_state(model), path, f"onnx-qdq {entry.path}")
    call = captured.inputs[path]
    if call.calls > 1:
        notes.append(f"{path or 'the model'} ran {call.calls} times per forward; its first call was exported")
    module, args, kwargs = wrap_call(module, call.args, call.kwargs, entry)
    artifact = export_qdq(module, args, kwargs, entry.opset, entry.fp16, entry.dynamic_axes)
    ort_target = entry.target == "onnxruntime"
    placement = place_for_onnxruntime(artifact.model, entry.fp16) if ort_target else None
    notes += placement_notes(placement) if placement else []
    set_metadata(artifact.model, recipe_metadata(loaded, format=entry.format, module=path or "<model>",
                                                 opset=entry.opset, fp16=entry.fp16,
                                                 target=entry.target if ort_target else None))
    model_bytes = artifact.model.SerializeToString(deterministic=True)
    feeds = artifact.inputs.feeds(np.float16 if entry.fp16 else None)
    ort_outputs = run_onnxruntime(model_bytes, feeds, optimization="all" if ort_target else "basic")
    reference, export_reference = _torch_outputs(module, args, kwargs)
    with quantizers_off(get_state(model)):
        fp32, _ = _torch_outputs(module, args, kwargs)
    check_reads(module)
    if ort_target:  # uint8 grids differ from the fake-quant model's: judged against FP32 (see ort_verify)
        figures = check_against_fp32(ort_outputs, reference, fp32, artifact.output_names, entry.margin_db)
        figures["onnxruntime"] = {**placement, "kernels": fused_ops(model_bytes)}
    else:
        figures = check_signal(ort_outputs, reference, fp32, artifact.output_names, entry.margin_db, "onnxruntime")
    export_mode_diff = max(compare(o, r)["max_abs_diff"] for o, r in zip(ort_outputs, export_reference, strict=True))
    census = qdq_census(artifact.model)
    file_info = save_onnx(artifact.model, out / entry.path)
    done[entry.path] = _QdqDone(entry, model_bytes, feeds, ort_outputs, artifact.output_names, reference, fp32)
    per_channel_axes = sorted({(p["axis"], tuple(p["consumers"])) for p in census["per_channel"]})
    return {**ctx.base(entry), **figures,
            "max_abs_diff_export_mode": round_figure(export_mode_diff),
            "exporter": "torch.onnx TorchScript (dynamo=False)",
            "opset": entry.opset, "fp16": entry.fp16, "target": entry.target,
            "inputs": {n: list(a.shape) for n, a in feeds.items()}, "output_names": artifact.output_names,
            "quantize_linear": census["quantize_linear"], "dequantize_linear": census["dequantize_linear"],
            "per_channel_weights": len(census["per_channel"]),
            "per_channel_axes": [{"axis": a, "consumers": list(c)} for a, c in per_channel_axes],
            "merged_duplicate_qdq": artifact.merged_qdq, "nodes": len(artifact.model.graph.node), "notes": notes,
            **file_info}


def check_signal(runtime: list, pytorch: list, fp32: list, names: list[str], margin_db: float, what: str) -> dict:
    """Signal figures of ``runtime`` (see :mod:`.signal_check`); RecipeError when it is not faithful."""
    figures = summarize_signal([signal_figures(r, p, f) for r, p, f in zip(runtime, pytorch, fp32, strict=True)],
                               names, margin_db)
    found = problems(figures, margin_db)
    if found:
        raise RecipeError(f"{what} is not faithful to the PyTorch fake-quant model: " + "; ".join(found) +
                          f" (max {figures['max_diff_steps']:.3g} output steps, {figures['frac_over_1_step']:.2%} "
                          "of elements off by more than one step)",
                          hint="a loss of signal or a systematic error points at a scale, zero point or weight "
                          "layout the runtime reads differently; `margin_db` sets the allowed SQNR loss")
    return figures


def _torch_outputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The module's outputs with its fake quantization as calibrated, and in export (native op) mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            _, reference = flatten_outputs(module(*args, **kwargs))
            with export_mode(module):
                _, exported = flatten_outputs(module(*args, **kwargs))
    finally:
        module.train(was_training)
    return reference, exported


# ----------------------------------------------------------------------------- onnx-sparse
def run_sparse(ctx: ExportContext, entry: OnnxSparseExport) -> dict:
    """The ``onnx-sparse`` format's run (registered in :mod:`.settings.onnx_sparse`)."""
    model, loaded, captured, out = ctx.model, ctx.loaded, ctx.captured, ctx.out
    # per sparse module: its fake-quant and FP32 traces, shared by the entries exporting it
    traces: dict[str, tuple[SparseTrace, SparseTrace]] = ctx.shared.setdefault("onnx-sparse", {})
    path = entry.module or ""
    module = find_module(model, path)
    state = get_state(model)
    check_exportable(state, path, f"onnx-sparse {entry.path}")
    if path not in traces:
        traces[path] = trace_both(module, path, captured.inputs[path].args, captured.inputs[path].kwargs, entry,
                                  state)
    trace, fp32_trace = traces[path]
    names_of = {id(q): names for names, q in state.unique()}
    source_layout = entry.source_layout or entry.layout
    built = build_scn(trace, layout=entry.layout, source_layout=source_layout, headroom=entry.output_bound_headroom,
                      fixed_bound=entry.output_bound, point_counts=captured.point_counts.get(path, {}),
                      input_points=captured.input_points.get(path, 0), names_of=names_of,
                      allow_fp16_to_int8=entry.allow_fp16_to_int8, compat=entry.compat)
    if captured.inputs[path].calls > 1:
        built.notes.append(f"{path or 'the model'} ran {captured.inputs[path].calls} times per forward; "
                           "its first call was exported")
    set_metadata(built.model, recipe_metadata(loaded, format=entry.format, module=path or "<model>",
                                              layout=entry.layout, source_layout=source_layout))
    figures = verify_sparse(built.model, trace, built.outputs, entry.layout != source_layout, fp32_trace,
                            entry.margin_db)
    file_info = save_onnx(built.model, out / entry.path)
    return {**ctx.base(entry), **figures, **built.summary,
            "output_axes": [_axis_names(o.axes, source_layout) for o in built.outputs],
            "output_matches_model_layout": all(o.exact for o in built.outputs),
            "notes": built.notes, **file_info}


def _axis_names(axes: list[str], source_layout: str) -> str:
    """"N,C,z,y,x"-style names of output axes labelled N, C, s0, s1, s2 (the model's index columns)."""
    spatial = dict(zip(("s0", "s1", "s2"), source_layout, strict=True))
    return ",".join(spatial.get(a, a) for a in axes)


def expected_outputs(trace: SparseTrace, outputs: list[OutputPlan], convert: bool) -> list[torch.Tensor]:
    """The PyTorch module's outputs, arranged as the file's outputs (identical unless axes had to move)."""
    expected = []
    for index, plan in enumerate(outputs):
        if plan.exact:
            expected.append(trace.output_tensors[index])
            continue
        dense = scatter_dense(trace, index)
        if convert:
            dense = dense.permute(*REVERSE)
        if plan.perm is not None:
            dense = dense.permute(*plan.perm)
        if plan.dims is not None:
            dense = dense.reshape([dense.shape[0], *plan.dims[1:]])
        expected.append(dense.contiguous())
    return expected


def trace_both(module: nn.Module, path: str, args: tuple, kwargs: dict, entry: OnnxSparseExport,
               state: Any) -> tuple[SparseTrace, SparseTrace]:
    """The sparse trace of the captured call with fake quantization, and with every quantizer off (FP32)."""
    runner, run_args, run_kwargs = wrap_call(module, args, kwargs, entry)
    was_training = module.training
    module.eval()
    try:
        trace = trace_sparse(module, path, run_args, run_kwargs, runner=runner)
        check_reads(runner)
        with quantizers_off(state):
            fp32 = trace_sparse(module, path, run_args, run_kwargs, runner=runner)
    finally:
        module.train(was_training)
    return trace, fp32


def verify_sparse(model, trace: SparseTrace, outputs: list[OutputPlan], convert: bool,
                  fp32_trace: SparseTrace | None = None, margin_db: float = 0.5) -> dict[str, Any]:
    """Run the file with the sparse reference runtime on the captured voxels; compare with PyTorch and FP32.

    Without ``fp32_trace`` only the step figures against PyTorch are returned (no judgement).
    """
    indices, spatial = trace.indices, trace.spatial_shape
    if convert:
        indices, spatial = swap_layout(indices, spatial)
    produced = run_sparse_runtime(model, trace.input_features, indices, spatial, trace.batch_size)
    names = [o.name for o in model.graph.output]
    reference = expected_outputs(trace, outputs, convert)
    if fp32_trace is None:
        return summarize([compare(p, r) for p, r in zip(produced, reference, strict=True)], names)
    fp32 = expected_outputs(fp32_trace, outputs, convert)
    return check_signal(produced, reference, fp32, names, margin_db, "the sparse reference runtime")


# ----------------------------------------------------------------------------- tensorrt
def run_tensorrt(ctx: ExportContext, entry: TensorRTExport) -> dict:
    """The ``tensorrt`` format's run (registered in :mod:`.settings.tensorrt`)."""
    loaded, out = ctx.loaded, ctx.out
    source: _QdqDone = ctx.shared.setdefault("onnx-qdq", {})[entry.source]
    if source.entry.target != "tensorrt":
        raise RecipeError(f"tensorrt: source {entry.source} is placed for onnxruntime (target: onnxruntime)",
                          hint="build the engine from an onnx-qdq entry with target: tensorrt")
    dynamic = bool(source.entry.dynamic_axes)
    profile = trt_export.profile_shapes(source.feeds, source.entry.dynamic_axes, entry.shapes)
    version = trt_export.installed_version()
    command = trt_export.trtexec_command(entry.source, entry.path, entry.workspace_gb, profile, dynamic, version)
    result = {**ctx.base(entry), "source": entry.source, "trtexec": command, "network": trt_export.network_kind(version),
              "profile": trt_export.describe(profile) if dynamic else None, "max_abs_diff": None}
    reason = trt_export.availability()
    if reason is not None:
        if entry.required:
            raise RecipeError(f"tensorrt: cannot build the engine: {reason}",
                              hint="run on a machine with a CUDA GPU and TensorRT, or set required: false")
        return {**result, "status": "skipped", "reason": f"skipped: {reason}"}
    engine = trt_export.build_engine(source.model_bytes, entry.workspace_gb, profile, dynamic)
    trt_outputs = trt_export.run_engine(engine, source.feeds)
    versus_ort = summarize([compare(t, o) for t, o in zip(trt_outputs, source.ort_outputs, strict=True)],
                           source.output_names)
    figures = check_signal(trt_outputs, source.pytorch, source.fp32, source.output_names, entry.margin_db,
                            "TensorRT")
    figures["versus_onnxruntime"] = {k: versus_ort[k] for k in ("max_abs_diff", "max_diff_steps", "frac_over_1_step")}
    trt_export.save_engine(str(out / entry.path), engine)
    import tensorrt as trt

    side = {**recipe_metadata(loaded, format=entry.format, source=entry.source), "tensorrt": trt.__version__,
            "trtexec": command, "profile": trt_export.describe(profile), "workspace_gb": entry.workspace_gb}
    save_json(out / f"{entry.path}.json", side)
    if trt_export.strongly_typed(trt.__version__) and not source.entry.fp16:
        result["notes"] = ["strongly typed: the layers without Q/DQ run in FP32; export the source with fp16: true "
                           "for FP16 ones"]
    return {**result, **figures, "compared_with": "pytorch+fp32", "tensorrt": trt.__version__,
            "network": trt_export.network_kind(trt.__version__),
            "metadata": f"{entry.path}.json", "bytes": len(engine)}
