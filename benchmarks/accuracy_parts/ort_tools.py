"""onnxruntime helpers: FP32 export of a dense part, ``quantize_static`` on captured inputs, a session as a module.

Also the single-input API that ``benchmarks/ort_latency.py`` and ``benchmarks/pointpillars_peers.py`` use
through ``accuracy.py`` (``DensePart``, ``ort_quantize``, ``OrtModule``, ``fp32_onnx``, ``capture_bev_inputs``,
``detector_evaluator``).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .common import quiet

ORT_CALIBRATION = {"MinMax": "MinMax", "Percentile": "Percentile 99.999",
                   "Entropy": "Entropy (quantize_static's fixed 128 bins / 128 quantized bins)"}


class OrtModule(nn.Module):
    """An onnxruntime CPU session called like an nn.Module with positional tensor inputs."""

    def __init__(self, model_bytes: bytes, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # Q/DQ -> QLinearConv
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_name = self.input_names[0]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the session; one output comes back as a tensor, several as a tuple."""
        feeds = {name: x.detach().numpy() for name, x in zip(self.input_names, inputs, strict=True)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def export_fp32(module: nn.Module, example: Sequence[torch.Tensor], input_names: Sequence[str]) -> bytes:
    """FP32 ONNX (TorchScript exporter, opset 17, BN folded by the exporter, dynamic first axis everywhere)."""
    with torch.no_grad():
        out = module.eval()(*example)
    count = 1 if isinstance(out, torch.Tensor) else len(out)
    outputs = ["output"] if count == 1 else [f"output{i}" for i in range(count)]
    buffer = io.BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(module.eval(), tuple(example), buffer, dynamo=False, opset_version=17,
                          input_names=list(input_names), output_names=outputs, do_constant_folding=True,
                          dynamic_axes={n: {0: "batch"} for n in [*input_names, *outputs]})
    return buffer.getvalue()


def fp32_onnx(module: nn.Module, example: torch.Tensor, input_name: str) -> bytes:
    """Single-input :func:`export_fp32`."""
    return export_fp32(module, (example,), (input_name,))


def quantize_feeds(fp32_bytes: bytes, feeds: Sequence[dict[str, np.ndarray]], method: str,
                   symmetric: bool = True) -> tuple[bytes, float]:
    """``quantize_static`` (QDQ, per-channel symmetric S8 weights) on ``feeds`` -> (model bytes, seconds).

    ``symmetric``: S8 activations with zero point 0 (what TensorRT runs); else ORT's default U8 asymmetric.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration feeds, one dict per batch."""

        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    activations = QuantType.QInt8 if symmetric else QuantType.QUInt8
    with tempfile.TemporaryDirectory() as tmp:
        raw, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        raw.write_bytes(fp32_bytes)
        start = time.perf_counter()
        with quiet(), contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=activations, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, method),
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        return out.read_bytes(), time.perf_counter() - start


@dataclass
class DensePart:
    """A single-input dense part: FP32 module, input name, calibration inputs, evaluation data and function."""

    name: str
    module: nn.Module | None
    input_name: str
    calib: list[torch.Tensor]
    val: Any
    evaluate: Callable[[nn.Module], float] | None


def ort_quantize(fp32_bytes: bytes, part: DensePart, method: str, symmetric: bool = True) -> tuple[bytes, float]:
    """Single-input :func:`quantize_feeds` on ``part.calib``."""
    return quantize_feeds(fp32_bytes, [{part.input_name: t.numpy()} for t in part.calib], method, symmetric)


def capture_inputs(model: nn.Module, path: str, batches: Sequence[Any], forward: Callable) -> list[tuple]:
    """The positional tensor inputs ``model.get_submodule(path)`` receives when ``model`` runs on ``batches``."""
    seen: list[tuple] = []
    module = model.get_submodule(path)
    handle = module.register_forward_pre_hook(
        lambda _m, args: seen.append(tuple(a.detach().clone() for a in args)))
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        handle.remove()
    return seen


def capture_bev_inputs(model: nn.Module, batches: Sequence[dict], forward: Callable) -> list[torch.Tensor]:
    """The tensors ``model.bev`` receives when the FP32 model runs on ``batches``."""
    return [args[0] for args in capture_inputs(model, "bev", batches, forward)]


def detector_evaluator(val: list[dict[str, torch.Tensor]]) -> Callable[[nn.Module], float]:
    """mAP of a BEV module on cached encoder outputs, with the zoo's own decode + metric code."""
    from recipe_engine.zoo.detection import evaluate_detector

    def evaluate(module: nn.Module) -> float:
        return evaluate_detector(module, val, lambda m, b: m(b["bev_features"]))["mAP"]

    return evaluate
