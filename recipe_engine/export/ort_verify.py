"""Verification of ``onnx-qdq`` files placed for onnxruntime (``target: onnxruntime``, :mod:`.onnx_ort`).

The fake-quant model is no longer the reference bit for bit: the file's uint8 steps after ReLU are finer
than the engine's int8 ones (``amax / 255`` against ``amax / 127``) and its biases are int32, so the
step-by-step comparison with PyTorch of :mod:`.signal_check` does not apply. The file runs with
onnxruntime's full graph optimisation (its integer kernels, what a deployment runs) and is judged against
FP32: its SQNR vs FP32 may be at most ``margin_db`` below PyTorch fake-quant's, and its systematic error
vs FP32 (offset/gain per output channel, the fit of :mod:`.signal_check`) may not exceed PyTorch
fake-quant's own by more than ``margin_db``, or -10 dB of PyTorch's noise, whichever is larger.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from ..recipe.errors import RecipeError


def fused_ops(model_bytes: bytes) -> dict[str, int]:
    """Op types of onnxruntime's optimised graph (ORT_ENABLE_ALL, CPU): which integer kernels it built."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "optimised.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        return dict(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))


# ----------------------------------------------------------------------------- verification against FP32
def _systematic_db(error: np.ndarray, reference: np.ndarray, budget: float) -> float:
    from .signal_check import _fit_energy, _groups

    energy = _fit_energy(_groups(error), _groups(reference)) if error.size else 0.0
    return float(10 * np.log10(max(energy, 1e-30) / budget))


def check_against_fp32(runtime: list, pytorch: list, fp32: list, names: list[str], margin_db: float) -> dict:
    """Signal figures of an onnxruntime-target file, judged against FP32 (RecipeError when it fails).

    Per output: ``sqnr_runtime_db`` (vs FP32) must be at least ``sqnr_pytorch_db - margin_db``, and
    ``systematic_vs_fp32_db`` (the offset/gain-per-channel part of ``runtime - fp32``, in dB of PyTorch
    fake-quant's noise energy) at most ``max(systematic_pytorch_vs_fp32_db + margin_db, -10)``. The step
    figures against PyTorch stay in the result for the report (uint8 steps differ, so they are not judged).
    """
    from .signal_check import SYSTEMATIC_DB, signal_figures, summarize_signal
    from .verify import round_figure, to_numpy

    per_output = []
    for rt, pt, ref in zip(runtime, pytorch, fp32, strict=True):
        figures = signal_figures(rt, pt, ref)
        r, p, f = (to_numpy(v).astype(np.float64) for v in (rt, pt, ref))
        budget = max(float(np.sum((p - f) ** 2)), float(np.sum(f * f)) * 1e-6, 1e-30)
        error = np.where(np.isfinite(r), r - f, 0.0)
        figures["systematic_vs_fp32_db"] = _systematic_db(error, f, budget) if np.isfinite(r).all() else float("inf")
        figures["systematic_pytorch_vs_fp32_db"] = _systematic_db(p - f, f, budget)
        per_output.append(figures)
    summary = summarize_signal(per_output, names, margin_db)
    for key, pick in (("systematic_vs_fp32_db", max), ("systematic_pytorch_vs_fp32_db", max)):
        summary[key] = round_figure(float(pick(o[key] for o in per_output)))
    summary["judged_against"] = "fp32"
    found = []
    for name, out in zip(names, per_output, strict=True):
        if not out["sqnr_loss_db"] <= margin_db:
            found.append(f"output {name!r}: SQNR vs FP32 {out['sqnr_runtime_db']:.2f} dB, {out['sqnr_loss_db']:.2f} dB "
                         f"below PyTorch fake-quant ({out['sqnr_pytorch_db']:.2f} dB), more than {margin_db} dB")
        allowed = max(out["systematic_pytorch_vs_fp32_db"] + margin_db, SYSTEMATIC_DB)
        if not out["systematic_vs_fp32_db"] <= allowed:
            found.append(f"output {name!r}: systematic error vs FP32 (offset/gain per channel) at "
                         f"{out['systematic_vs_fp32_db']:.1f} dB of the quantization noise, above {allowed:.1f} dB")
    if found:
        raise RecipeError("onnxruntime (integer kernels) is not faithful to FP32 as the fake-quant model is: "
                          + "; ".join(found),
                          hint="a wrong scale, zero point or weight layout in the onnxruntime placement; "
                          "`target: tensorrt` writes the plain Q/DQ file")
    return summary
