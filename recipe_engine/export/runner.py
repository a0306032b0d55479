"""Run a recipe's ``export:`` entries: one verified artifact per entry in the run directory.

:func:`export` is the public entry point after a user's own training loop;
:func:`run_exports` is what ``recipe run`` calls. Both return one result dict per entry
(``path``, ``format``, ``status``, ``max_abs_diff`` and the other verification figures), which
the pipeline stores under ``exports`` in ``metrics.json``:

- every entry: ``path``, ``format``, ``module``, ``status`` (``ok`` / ``skipped``), ``seconds``;
- ``onnx-qdq``: onnxruntime vs the PyTorch fake-quant module on the captured inputs:
  ``max_abs_diff``, ``mean_abs_diff``, ``max_diff_steps`` and ``frac_over_1_step`` (step = output
  range / 255, see :mod:`.verify`), ``rel_error``, per-output figures, the Q/DQ census, file size/sha256;
- ``onnx-sparse``: the reference executor vs PyTorch: the same figures (``rel_error`` is what
  ``tolerance`` bounds), conv/add counts by precision, ``output_bound``, ``max_points``,
  ``output_axes``, ``notes`` (precision decisions);
- ``tensorrt``: ``trtexec`` (the equivalent command line), ``reason`` when skipped, else TensorRT vs
  onnxruntime figures and the engine's ``.json`` side file.

An entry that fails its checks raises a RecipeError located at the entry; it writes no file.
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
from ..recipe.schema import OnnxQdqExport, OnnxSparseExport, Recipe, TensorRTExport
from . import tensorrt as trt_export
from .artifact import recipe_metadata, save_json, save_onnx, set_metadata
from .capture import CaptureResult, capture, find_module
from .onnx_qdq import export_mode, export_qdq, flatten_outputs, qdq_census
from .onnx_sparse import REVERSE, OutputPlan, build_scn
from .quantizers import check_exportable, qdq_notes, quantizers_off
from .scn_reference import run_scn, swap_layout
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


def export(model: nn.Module, recipe: LoadedRecipe | Recipe | str | os.PathLike | dict, out_dir: str | os.PathLike,
           batches: Iterable, forward: Callable[[nn.Module, Any], Any] | None = None) -> list[dict]:
    """Write and verify every ``export:`` entry of ``recipe`` for a quantized, calibrated ``model``.

    ``batches`` are calibration batches (the first one supplies the exported modules' inputs);
    ``forward(model, batch)`` runs one (default: ``model(**batch)`` / ``model(*batch)`` / ``model(batch)``).
    """
    from ..recipe.loader import as_loaded

    return run_exports(model, as_loaded(recipe), out_dir, batches, forward)


def run_exports(model: nn.Module, loaded: LoadedRecipe, out_dir: str | os.PathLike, calib_batches: Iterable,
                forward: Callable[[nn.Module, Any], Any] | None) -> list[dict]:
    """The export step of ``recipe run``; raises RecipeError (located at the entry) when a check fails."""
    spec = loaded.spec
    if not spec.export:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    forward = forward or data_mod.default_forward
    state = get_state(model)  # fails clearly for a model that was never quantized
    _fuse_before_export(model, loaded)
    _check_modules(model, loaded)
    dense = [e.module or "" for e in spec.export if isinstance(e, OnnxQdqExport)]
    sparse_paths = [e.module or "" for e in spec.export if isinstance(e, OnnxSparseExport)]
    captured = capture(model, calib_batches, forward, dense + sparse_paths, sparse_paths,
                       count_batches=spec.calibration.batches, counting_context=lambda: quantizers_off(state))
    done: dict[str, _QdqDone] = {}
    traces: dict[str, SparseTrace] = {}  # one trace per sparse module, shared by its exports
    results: list[dict] = []
    for index, entry in enumerate(spec.export):
        tick = time.perf_counter()
        try:
            if isinstance(entry, OnnxQdqExport):
                result = _export_qdq(model, loaded, entry, captured, out, done)
            elif isinstance(entry, OnnxSparseExport):
                result = _export_sparse(model, loaded, entry, captured, out, traces)
            else:
                result = _export_tensorrt(loaded, entry, out, done)
        except RecipeError as exc:
            raise loaded.error(("export", index), f"{entry.path}: {exc.headline}", hint=exc.hint) from None
        result["seconds"] = round(time.perf_counter() - tick, 3)
        results.append(result)
    return results


def _fuse_before_export(model: nn.Module, loaded: LoadedRecipe) -> None:
    """Apply ``fuse`` entries with ``phase: before_export`` once per model."""
    if not any(f.phase == "before_export" for f in loaded.spec.fuse) or model.__dict__.get(FUSED_FLAG):
        return
    from ..fuse import apply_fusions

    apply_fusions(model, loaded.spec, phase="before_export")
    model.__dict__[FUSED_FLAG] = True


def _check_modules(model: nn.Module, loaded: LoadedRecipe) -> None:
    for index, entry in enumerate(loaded.spec.export):
        if entry.module:
            try:
                find_module(model, entry.module)
            except RecipeError as exc:
                raise loaded.error(("export", index, "module"), exc.headline, hint=exc.hint) from None


def _base(entry: Any) -> dict[str, Any]:
    return {"path": entry.path, "format": entry.format, "module": entry.module or None, "status": "ok"}


# ----------------------------------------------------------------------------- onnx-qdq
def _export_qdq(model: nn.Module, loaded: LoadedRecipe, entry: OnnxQdqExport, captured: CaptureResult,
                out: Path, done: dict[str, _QdqDone]) -> dict:
    path = entry.module or ""
    module = find_module(model, path)
    check_exportable(get_state(model), path, f"onnx-qdq {entry.path}")
    notes = qdq_notes(get_state(model), path, f"onnx-qdq {entry.path}")
    call = captured.inputs[path]
    if call.calls > 1:
        notes.append(f"{path or 'the model'} ran {call.calls} times per forward; its first call was exported")
    artifact = export_qdq(module, call.args, call.kwargs, entry.opset, entry.fp16, entry.dynamic_axes)
    set_metadata(artifact.model, recipe_metadata(loaded, format=entry.format, module=path or "<model>",
                                                 opset=entry.opset, fp16=entry.fp16))
    model_bytes = artifact.model.SerializeToString(deterministic=True)
    feeds = artifact.inputs.feeds(np.float16 if entry.fp16 else None)
    ort_outputs = run_onnxruntime(model_bytes, feeds)
    reference, export_reference = _torch_outputs(module, call.args, call.kwargs)
    figures = summarize([compare(o, r) for o, r in zip(ort_outputs, reference, strict=True)], artifact.output_names)
    export_mode_diff = max(compare(o, r)["max_abs_diff"] for o, r in zip(ort_outputs, export_reference, strict=True))
    census = qdq_census(artifact.model)
    _check_steps(figures, entry.tolerance, entry.max_fraction, "onnxruntime differs from PyTorch")
    file_info = save_onnx(artifact.model, out / entry.path)
    done[entry.path] = _QdqDone(entry, model_bytes, feeds, ort_outputs, artifact.output_names)
    per_channel_axes = sorted({(p["axis"], tuple(p["consumers"])) for p in census["per_channel"]})
    return {**_base(entry), **figures,
            "max_abs_diff_export_mode": round_figure(export_mode_diff),
            "tolerance_steps": entry.tolerance, "max_fraction": entry.max_fraction,
            "exporter": "torch.onnx TorchScript (dynamo=False)",
            "opset": entry.opset, "fp16": entry.fp16,
            "inputs": {n: list(a.shape) for n, a in feeds.items()}, "output_names": artifact.output_names,
            "quantize_linear": census["quantize_linear"], "dequantize_linear": census["dequantize_linear"],
            "per_channel_weights": len(census["per_channel"]),
            "per_channel_axes": [{"axis": a, "consumers": list(c)} for a, c in per_channel_axes],
            "merged_duplicate_qdq": artifact.merged_qdq, "nodes": len(artifact.model.graph.node), "notes": notes,
            **file_info}


def _check_steps(figures: dict, tolerance: float, max_fraction: float, what: str) -> None:
    """Fail when the max difference exceeds ``tolerance`` steps or too many elements are off by > 1 step."""
    too_far = not figures["max_diff_steps"] <= tolerance
    too_many = not figures["frac_over_1_step"] <= max_fraction
    if too_far or too_many:
        limit = (f"above the tolerance of {tolerance} steps" if too_far else
                 f"more than the allowed {max_fraction:.2%}")
        raise RecipeError(f"{what} by up to {figures['max_diff_steps']:.3g} output steps (max |diff| "
                          f"{figures['max_abs_diff']:.3g}; {figures['frac_over_1_step']:.2%} of elements off by more "
                          f"than one step), {limit}",
                          hint="look for layers the exporter cannot express, or raise `tolerance` / `max_fraction`")


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
def _export_sparse(model: nn.Module, loaded: LoadedRecipe, entry: OnnxSparseExport, captured: CaptureResult,
                   out: Path, traces: dict[str, SparseTrace]) -> dict:
    path = entry.module or ""
    module = find_module(model, path)
    state = get_state(model)
    check_exportable(state, path, f"onnx-sparse {entry.path}")
    if path not in traces:
        call = captured.inputs[path]
        was_training = module.training
        module.eval()
        try:
            traces[path] = trace_sparse(module, path, call.args, call.kwargs)
        finally:
            module.train(was_training)
    trace = traces[path]
    names_of = {id(q): names for names, q in state.unique()}
    source_layout = entry.source_layout or entry.layout
    built = build_scn(trace, layout=entry.layout, source_layout=source_layout, headroom=entry.output_bound_headroom,
                      fixed_bound=entry.output_bound, point_counts=captured.point_counts.get(path, {}),
                      input_points=captured.input_points.get(path, 0), names_of=names_of)
    if captured.inputs[path].calls > 1:
        built.notes.append(f"{path or 'the model'} ran {captured.inputs[path].calls} times per forward; "
                           "its first call was exported")
    set_metadata(built.model, recipe_metadata(loaded, format=entry.format, module=path or "<model>",
                                              layout=entry.layout, source_layout=source_layout))
    figures = verify_sparse(built.model, trace, built.outputs, entry.layout != source_layout)
    if not figures["rel_error"] <= entry.tolerance:
        raise RecipeError(f"the reference executor differs from PyTorch by {figures['rel_error']:.3g} of the output "
                          f"range (max |diff| {figures['max_abs_diff']:.3g}), above the tolerance of {entry.tolerance}",
                          hint="check the notes of this export (precision changes) or raise `tolerance`")
    file_info = save_onnx(built.model, out / entry.path)
    return {**_base(entry), **figures, "tolerance_rel": entry.tolerance, **built.summary,
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
        dense = trace.scatter_tensors[plan.scatter]
        if convert:
            dense = dense.permute(*REVERSE)
        if plan.perm is not None:
            dense = dense.permute(*plan.perm)
        if plan.dims is not None:
            dense = dense.reshape([dense.shape[0], *plan.dims[1:]])
        expected.append(dense.contiguous())
    return expected


def verify_sparse(model, trace: SparseTrace, outputs: list[OutputPlan], convert: bool) -> dict[str, Any]:
    """Run the file with the reference executor on the captured voxels and compare with PyTorch."""
    indices, spatial = trace.indices, trace.spatial_shape
    if convert:
        indices, spatial = swap_layout(indices, spatial)
    produced = run_scn(model, trace.input_features, indices, spatial, trace.batch_size)
    names = [o.name for o in model.graph.output]
    reference = expected_outputs(trace, outputs, convert)
    return summarize([compare(p, r) for p, r in zip(produced, reference, strict=True)], names)


# ----------------------------------------------------------------------------- tensorrt
def _export_tensorrt(loaded: LoadedRecipe, entry: TensorRTExport, out: Path, done: dict[str, _QdqDone]) -> dict:
    source = done[entry.source]
    dynamic = bool(source.entry.dynamic_axes)
    profile = trt_export.profile_shapes(source.feeds, source.entry.dynamic_axes, entry.shapes)
    command = trt_export.trtexec_command(entry.source, entry.path, entry.workspace_gb, profile, dynamic)
    result = {**_base(entry), "source": entry.source, "trtexec": command,
              "profile": trt_export.describe(profile) if dynamic else None, "max_abs_diff": None}
    reason = trt_export.availability()
    if reason is not None:
        if entry.required:
            raise RecipeError(f"tensorrt: cannot build the engine: {reason}",
                              hint="run on a machine with a CUDA GPU and TensorRT, or set required: false")
        return {**result, "status": "skipped", "reason": f"skipped: {reason}"}
    engine = trt_export.build_engine(source.model_bytes, entry.workspace_gb, profile, dynamic)
    trt_outputs = trt_export.run_engine(engine, source.feeds)
    figures = summarize([compare(t, o) for t, o in zip(trt_outputs, source.ort_outputs, strict=True)],
                        source.output_names)
    _check_steps(figures, entry.tolerance, 1.0, "TensorRT differs from onnxruntime")
    trt_export.save_engine(str(out / entry.path), engine)
    import tensorrt as trt

    side = {**recipe_metadata(loaded, format=entry.format, source=entry.source), "tensorrt": trt.__version__,
            "trtexec": command, "profile": trt_export.describe(profile), "workspace_gb": entry.workspace_gb}
    save_json(out / f"{entry.path}.json", side)
    return {**result, **figures, "compared_with": "onnxruntime", "tensorrt": trt.__version__,
            "metadata": f"{entry.path}.json", "bytes": len(engine)}
