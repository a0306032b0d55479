"""Numerical comparison of an exported artifact's outputs with PyTorch's.

The *output quantization step* of a reference tensor is its range divided by 255,
``(max - min) / 255``: the spacing an 8-bit quantizer spanning exactly that output would have.
Differences are reported absolute, in steps, and relative to the largest magnitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def output_step(reference: np.ndarray) -> float:
    """(max - min) / 255 of ``reference``; falls back to max|x|/127, then 1e-12 for constant zeros."""
    if reference.size == 0:
        return 1e-12
    step = (float(reference.max()) - float(reference.min())) / 255.0  # float64 of exact float32 extremes
    if step <= 0:
        step = float(np.abs(reference).max()) / 127.0
    return step if step > 0 else 1e-12


BLOCK = 1 << 20  # elements per float64 block of compare's streaming passes


def compare(actual: Any, reference: Any) -> dict[str, float]:
    """max/mean |actual - reference|, the output step, max diff in steps, the fraction of
    elements off by more than one step, and max diff relative to max |reference|.

    Streams over float64 blocks of :data:`BLOCK` elements (no float64 copy of the whole outputs)."""
    a, r = to_numpy(actual), to_numpy(reference)
    if a.shape != r.shape:
        raise ValueError(f"output shapes differ: {a.shape} vs {r.shape}")
    step = output_step(r)
    flat_a, flat_r = a.reshape(-1), r.reshape(-1)
    maxima, scales, total, over, finite = [], [], 0.0, 0, True
    for start in range(0, flat_a.size, BLOCK):
        block_a = flat_a[start:start + BLOCK].astype(np.float64)
        block_r = flat_r[start:start + BLOCK].astype(np.float64)
        diff = np.abs(block_a - block_r)
        maxima.append(diff.max())
        total += float(diff.sum())
        over += int(np.count_nonzero(diff > step))
        scales.append(np.abs(block_r).max())
        finite = finite and bool(np.isfinite(block_a).all())
    max_diff = float(np.max(maxima)) if maxima else 0.0
    scale = float(np.max(scales)) if scales else 0.0
    size = flat_a.size
    return {
        "max_abs_diff": max_diff if finite else float("inf"),
        "mean_abs_diff": total / size if size else 0.0,
        "output_step": step,
        "max_diff_steps": max_diff / step if finite else float("inf"),
        "frac_over_1_step": over / size if size else 0.0,
        "rel_error": (max_diff / scale if scale > 0 else max_diff) if finite else float("inf"),
    }


def summarize(per_output: Sequence[dict[str, float]], names: Sequence[str]) -> dict[str, Any]:
    """The worst figures over all outputs, plus the per-output list."""
    keys = ("max_abs_diff", "max_diff_steps", "frac_over_1_step", "rel_error", "mean_abs_diff")
    worst = {k: max(float(o[k]) for o in per_output) for k in keys}
    worst["outputs"] = [{"name": n, **{k: round_figure(v) for k, v in o.items()}}
                        for n, o in zip(names, per_output, strict=True)]
    return {k: (round_figure(v) if isinstance(v, float) else v) for k, v in worst.items()}


def round_figure(value: float) -> float:
    """Figures for metrics.json: 6 significant digits (inf/nan kept)."""
    if not np.isfinite(value) or value == 0:
        return float(value)
    return float(f"{value:.6g}")


def run_onnxruntime(model_bytes: bytes, feeds: dict[str, np.ndarray], threads: int = 0,
                    optimization: str = "basic") -> list[np.ndarray]:
    """Run an ONNX model with onnxruntime's CPU execution provider.

    Verification uses ``basic`` graph optimisations (constant folding, no Q/DQ -> QLinear*
    fusion), so Q/DQ pairs run as written, which is the semantics TensorRT implements;
    onnxruntime 1.2x's level-3 fusions also mistype Cast-wrapped Q/DQ in FP16 graphs.
    """
    import onnxruntime as ort

    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = levels[optimization]
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
