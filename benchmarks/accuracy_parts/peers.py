"""The peers on the same calibration batches and evaluation splits: onnxruntime ``quantize_static`` on the
dense parts and NVIDIA Model-Optimizer's ``INT8_DEFAULT_CFG`` in-process on the whole model.

onnxruntime: each dense part of :class:`~.models.ModelSpec` (PointPillars: the pillar feature net and the
BEV network; CenterPoint: ``bev``; BEVFusion: ``camera`` and ``bev``; digits: the whole network) is exported
to FP32 ONNX, quantized with ``quantize_static`` (QDQ, S8 symmetric activations as TensorRT needs, per-channel
S8 weights) on the inputs that part receives when the FP32 model runs on the seed's calibration batches,
and put back into the model as an onnxruntime session (real INT8 kernels); the rest (sparse encoders, the
pillar scatter, the view transform) stays FP32 PyTorch. Inputs that are point rows (the PFN's) are fed in
equal chunks of 16384 rows: ORT's histogram calibrators need one shape; the statistics cover the same data.

Model-Optimizer: ``mtq.quantize(model, INT8_DEFAULT_CFG, forward_loop)`` on the FP32 model (per-channel max
weights, per-tensor max inputs on every nn.Conv/Linear modelopt knows; BatchNorm left unfolded; spconv
layers are not modelopt modules and stay FP32), ``forward_loop`` running the recipe's forward over the same
calibration batches.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import engine_rows
from .common import Measure, Timer, first, log, quiet
from .models import ModelSpec, Settings
from .ort_tools import OrtModule, capture_inputs, export_fp32, quantize_feeds

ORT_METHODS = ("MinMax", "Entropy", "Percentile")
CHUNK = 16384


def calibration(spec: ModelSpec, settings: Settings, seed: int) -> tuple[Any, list[Any], Any]:
    """(loaded recipe, the seed's calibration batches as the recipe takes them, forward)."""
    from recipe_engine import data as data_mod

    loaded = engine_rows.load(spec, settings, [], seed)
    batches = first(data_mod.make_data(loaded, "calibration"), loaded.spec.calibration.batches)
    return loaded, batches, data_mod.forward_fn(loaded)


def set_part(model: nn.Module, path: str, part: nn.Module) -> nn.Module:
    """``model`` with the submodule at ``path`` replaced (the whole model for ``""``)."""
    if not path:
        return part
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, part)
    return model


@dataclass
class OrtPrepared:
    """One model and seed: the FP32 model, per part its FP32 ONNX and calibration feeds, capture seconds."""

    model: nn.Module
    parts: dict[str, tuple[bytes, list[dict]]]
    seconds: float


_PREPARED: dict[tuple[str, int], OrtPrepared] = {}


def ort_prepare(spec: ModelSpec, settings: Settings, seed: int) -> OrtPrepared:
    """Capture every dense part's inputs on the seed's calibration batches and export it (cached)."""
    from recipe_engine import data as data_mod

    key = (spec.name, seed)
    if key in _PREPARED:
        return _PREPARED[key]
    _PREPARED.clear()  # one model/seed at a time: the feeds are large
    loaded, batches, forward = calibration(spec, settings, seed)
    model = data_mod.build_model(loaded).eval()
    parts: dict[str, tuple[bytes, list[dict]]] = {}
    timer = Timer()
    with timer:
        for dense in spec.dense:
            captured = capture_inputs(model, dense.path, batches, forward)
            names = [f"input{i}" for i in range(len(captured[0]))]
            if dense.rows:
                rows = torch.cat([args[0] for args in captured])
                chunks = [rows[i:i + CHUNK] for i in range(0, max(len(rows) - CHUNK + 1, 1), CHUNK)]
                captured = [(c,) for c in chunks]
            feeds = [{n: t.numpy() for n, t in zip(names, args, strict=True)} for args in captured]
            parts[dense.path] = (export_fp32(model.get_submodule(dense.path), captured[0], names), feeds)
    _PREPARED[key] = OrtPrepared(model, parts, timer.seconds)
    return _PREPARED[key]


def ort_fp32(spec: ModelSpec, settings: Settings, seed: int) -> Measure:
    """The dense parts as FP32 onnxruntime sessions (the export's own loss, if any)."""
    prepared = ort_prepare(spec, settings, seed)
    model = copy.deepcopy(prepared.model)
    for path, (fp32_bytes, _) in prepared.parts.items():
        model = set_part(model, path, OrtModule(fp32_bytes, settings.threads))
    return engine_rows.eval_data(spec, settings).measure(model, None)


def ort_row(spec: ModelSpec, settings: Settings, seed: int, method: str) -> Measure:
    """``quantize_static`` with ``method`` on every dense part; the model evaluated with them in onnxruntime."""
    prepared = ort_prepare(spec, settings, seed)
    model = copy.deepcopy(prepared.model)
    seconds = prepared.seconds
    for path, (fp32_bytes, feeds) in prepared.parts.items():
        log(f"  {spec.name}: quantize_static {method} on {path or 'the whole network'} ({len(feeds)} feeds)")
        model_bytes, took = quantize_feeds(fp32_bytes, feeds, method)
        seconds += took
        model = set_part(model, path, OrtModule(model_bytes, settings.threads))
    parts = ", ".join(p or "whole network" for p in prepared.parts)
    return engine_rows.eval_data(spec, settings).measure(model, seconds, f"parts: {parts}")


def modelopt_version() -> str | None:
    """nvidia-modelopt's version, or None when it does not import."""
    try:
        import modelopt
        import modelopt.torch.quantization  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: not available
        return None
    return modelopt.__version__


def modelopt_row(spec: ModelSpec, settings: Settings, seed: int) -> Measure:
    """``mtq.quantize(FP32 model, INT8_DEFAULT_CFG, forward_loop)`` in this interpreter."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.nn import TensorQuantizer

    from recipe_engine import data as data_mod

    loaded, batches, forward = calibration(spec, settings, seed)
    torch.manual_seed(0)
    model = data_mod.build_model(loaded).eval()

    def loop(_m: nn.Module) -> None:
        for batch in batches:
            forward(model, batch)

    timer = Timer()
    with quiet(), timer, torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # it prints a count
        model = mtq.quantize(model, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop=loop)
    enabled = sum(1 for m in model.modules() if isinstance(m, TensorQuantizer) and m.is_enabled)
    return engine_rows.eval_data(spec, settings).measure(model, timer.seconds, f"{enabled} quantizers")
