"""Export verification by signal: does the runtime keep the accuracy PyTorch's fake quantization has?

Three outputs of one exported module on the same captured inputs are compared:
``fp32`` (the module with every quantizer off), ``pytorch`` (its fake quantization as
calibrated) and ``runtime`` (onnxruntime, the sparse reference runtime or TensorRT).

- **SQNR** ``10 log10(|fp32|^2 / |x - fp32|^2)`` of ``pytorch`` and of ``runtime`` (capped at
  :data:`CEILING_DB`: differences finer than that are float rounding, not quantization). The
  export fails when the runtime's SQNR is more than ``margin_db`` below PyTorch's.
- **Systematic error.** Rounding chaos (values on a rounding boundary that flip between two
  int8 simulations, and the flips spreading through later layers) moves elements by whole
  steps in both directions, independently of the signal: its mean is 0 and it is uncorrelated
  with the FP32 output. A bug (a wrong scale, zero point, bias or channel order) is not: it
  shows as an offset or a gain, per output channel. ``d = runtime - pytorch`` is fitted by
  least squares with ``a_c + b_c * fp32`` per output channel (axis 1, when every channel has at
  least :data:`MIN_PER_CHANNEL` elements, else one global fit); the energy of that fit is the
  *systematic* error. It is judged against the quantization noise PyTorch itself has,
  ``|pytorch - fp32|^2``: the export fails when the systematic part is above
  :data:`SYSTEMATIC_DB` (-10 dB, a tenth of the noise budget). Chaos of the same energy as the
  budget puts about ``2 x channels / elements`` of its energy into the fit (-21 dB and less at
  ``MIN_PER_CHANNEL``), so the threshold separates the two by a wide margin.
- **Step statistics** (step = pytorch output range / 255) stay in the figures for the report:
  ``max_diff_steps``, ``frac_over_1_step``, ``bias_steps`` (mean signed error in steps),
  ``gain`` (the global slope of ``d`` on ``fp32``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .verify import compare, round_figure, to_numpy

CEILING_DB = 60.0
SYSTEMATIC_DB = -10.0
MIN_PER_CHANNEL = 256


def sqnr_db(actual: np.ndarray, reference: np.ndarray) -> float:
    """SQNR of ``actual`` against ``reference`` in dB, capped at :data:`CEILING_DB`."""
    signal = float(np.sum(reference * reference))
    noise = float(np.sum((actual - reference) ** 2))
    if not np.isfinite(noise):
        return float("-inf")
    if noise <= signal * 10 ** (-CEILING_DB / 10) or signal == 0:
        return CEILING_DB
    return min(CEILING_DB, 10 * np.log10(signal / noise))


def _fit_energy(d: np.ndarray, x: np.ndarray) -> float:
    """Energy of the least-squares fit of ``d`` by ``a + b * x`` (rows: groups, columns: elements)."""
    xm = x - x.mean(axis=1, keepdims=True)
    dm = d.mean(axis=1, keepdims=True)
    sxx = np.sum(xm * xm, axis=1)
    sxd = np.sum(xm * d, axis=1)
    slope = np.divide(sxd, sxx, out=np.zeros_like(sxd), where=sxx > 0)
    return float(np.sum(dm[:, 0] ** 2) * d.shape[1] + np.sum(slope * slope * sxx))


def _groups(array: np.ndarray) -> np.ndarray:
    """Rows = output channels (axis 1) when each has enough elements, else one row."""
    if array.ndim >= 2 and array.size // max(array.shape[1], 1) >= MIN_PER_CHANNEL:
        return np.moveaxis(array, 1, 0).reshape(array.shape[1], -1)
    return array.reshape(1, -1)


def signal_figures(runtime: Any, pytorch: Any, fp32: Any) -> dict[str, float]:
    """Figures of one output: SQNRs, loss, systematic error, and the step statistics vs PyTorch."""
    rt, pt, ref = (to_numpy(v).astype(np.float64) for v in (runtime, pytorch, fp32))
    if not (rt.shape == pt.shape == ref.shape):
        raise ValueError(f"output shapes differ: runtime {rt.shape}, pytorch {pt.shape}, fp32 {ref.shape}")
    steps = compare(rt, pt)
    sqnr_pt, sqnr_rt = sqnr_db(pt, ref), sqnr_db(rt, ref)
    finite = bool(np.isfinite(rt).all())
    d = np.where(np.isfinite(rt), rt - pt, 0.0)
    budget = max(float(np.sum((pt - ref) ** 2)), float(np.sum(ref * ref)) * 10 ** (-CEILING_DB / 10), 1e-30)
    systematic = _fit_energy(_groups(d), _groups(ref)) if d.size else 0.0
    flat_x = ref.reshape(-1) - ref.mean() if ref.size else ref.reshape(-1)
    sxx = float(np.sum(flat_x * flat_x))
    gain = float(np.sum(flat_x * d.reshape(-1)) / sxx) if sxx > 0 else 0.0
    return {
        **steps,
        "sqnr_pytorch_db": sqnr_pt,
        "sqnr_runtime_db": sqnr_rt if finite else float("-inf"),
        "sqnr_loss_db": (sqnr_pt - sqnr_rt) if finite else float("inf"),
        "systematic_db": 10 * np.log10(max(systematic, 1e-30) / budget) if finite else float("inf"),
        "bias_steps": float(d.mean() / steps["output_step"]) if d.size else 0.0,
        "gain": gain,
    }


WORST = {"max_abs_diff": max, "mean_abs_diff": max, "max_diff_steps": max, "frac_over_1_step": max,
         "rel_error": max, "sqnr_pytorch_db": min, "sqnr_runtime_db": min, "sqnr_loss_db": max,
         "systematic_db": max}


def summarize_signal(per_output: Sequence[dict[str, float]], names: Sequence[str], margin_db: float) -> dict[str, Any]:
    """Worst figures over the outputs, the per-output list and the margin applied."""
    worst = {k: float(pick(float(o[k]) for o in per_output)) for k, pick in WORST.items()}
    worst = {k: round_figure(v) for k, v in worst.items()}
    worst["margin_db"] = margin_db
    worst["outputs"] = [{"name": n, **{k: round_figure(float(v)) for k, v in o.items()}}
                        for n, o in zip(names, per_output, strict=True)]
    return worst


def problems(figures: dict[str, Any], margin_db: float) -> list[str]:
    """Why the runtime is not faithful (empty: it is), one sentence per failing output."""
    found = []
    for output in figures["outputs"]:
        name = output["name"]
        if not output["sqnr_loss_db"] <= margin_db:
            found.append(f"output {name!r}: SQNR vs FP32 {output['sqnr_runtime_db']:.2f} dB, "
                         f"{output['sqnr_loss_db']:.2f} dB below PyTorch fake-quant ({output['sqnr_pytorch_db']:.2f} "
                         f"dB), more than the margin of {margin_db} dB")
        if not output["systematic_db"] <= SYSTEMATIC_DB:
            found.append(f"output {name!r}: systematic error (offset/gain per channel) at {output['systematic_db']:.1f}"
                         f" dB of the quantization noise, above {SYSTEMATIC_DB:.0f} dB (mean error "
                         f"{output['bias_steps']:+.3g} steps, gain {output['gain']:+.3g})")
    return found
