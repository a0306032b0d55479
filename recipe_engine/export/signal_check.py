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
BLOCK = 1 << 20  # elements per float64 block of the streaming statistics (8 MiB per array)


def sqnr_db(actual: np.ndarray, reference: np.ndarray) -> float:
    """SQNR of ``actual`` against ``reference`` in dB, capped at :data:`CEILING_DB`."""
    return _sqnr(float(np.sum(reference * reference)), float(np.sum((actual - reference) ** 2)))


def _sqnr(signal: float, noise: float) -> float:
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


def _per_channel(array: np.ndarray) -> bool:
    """Whether the fit is per output channel (axis 1): every channel has MIN_PER_CHANNEL elements."""
    return array.ndim >= 2 and array.size // max(array.shape[1], 1) >= MIN_PER_CHANNEL


def _groups(array: np.ndarray) -> np.ndarray:
    """Rows = output channels (axis 1) when each has enough elements, else one row."""
    if _per_channel(array):
        return np.moveaxis(array, 1, 0).reshape(array.shape[1], -1)
    return array.reshape(1, -1)


def _blocks(arrays: Sequence[np.ndarray], per_channel: bool):
    """``(first group, float64 blocks [groups, elements])`` covering same-shaped ``arrays``, BLOCK elements or less.

    Groups are the output channels (axis 1; a block holds channels of one batch item, or a part of
    one channel) when ``per_channel``, else one group over the flattened arrays.
    """
    if not per_channel:
        flat = [a.reshape(-1) for a in arrays]
        for start in range(0, flat[0].size, BLOCK):
            yield 0, [f[start:start + BLOCK].astype(np.float64).reshape(1, -1) for f in flat]
        return
    channels, inner = arrays[0].shape[1], arrays[0][0, 0].size
    step = max(1, BLOCK // max(inner, 1))
    for item in range(arrays[0].shape[0]):
        for first in range(0, channels, step):
            rows = [a[item, first:first + step].reshape(min(step, channels - first), -1) for a in arrays]
            width = BLOCK // len(rows[0])  # elements of each channel per block: all, unless inner > BLOCK
            for start in range(0, inner, width):
                yield first, [r[:, start:start + width].astype(np.float64) for r in rows]


def signal_figures(runtime: Any, pytorch: Any, fp32: Any) -> dict[str, float]:
    """Figures of one output: SQNRs, loss, systematic error, and the step statistics vs PyTorch.

    Two streaming passes over float64 blocks (:data:`BLOCK` elements), so the memory stays a few
    blocks whatever the output's size: sums per channel group, then the sums around their means.
    """
    rt, pt, ref = (to_numpy(v) for v in (runtime, pytorch, fp32))
    if not (rt.shape == pt.shape == ref.shape):
        raise ValueError(f"output shapes differ: runtime {rt.shape}, pytorch {pt.shape}, fp32 {ref.shape}")
    steps = compare(rt, pt)
    per_channel = _per_channel(ref)
    groups = ref.shape[1] if per_channel else 1
    size = ref.size
    count = size // groups if size else 0
    sum_x, sum_d = np.zeros(groups), np.zeros(groups)
    signal = noise_pt = noise_rt = 0.0
    finite = True
    for first, (r, p, x) in _blocks((rt, pt, ref), per_channel):
        rows = slice(first, first + len(x))
        ok = np.isfinite(r)
        finite = finite and bool(ok.all())
        d = np.where(ok, r - p, 0.0)
        sum_x[rows] += x.sum(axis=1)
        sum_d[rows] += d.sum(axis=1)
        signal += float(np.sum(x * x))
        noise_pt += float(np.sum((p - x) ** 2))
        noise_rt += float(np.sum((r - x) ** 2))
    mean_x = sum_x / max(count, 1)
    mean_all = float(sum_x.sum()) / size if size else 0.0
    sxx, sxd = np.zeros(groups), np.zeros(groups)
    sxx_all = sxd_all = 0.0
    for first, (r, p, x) in _blocks((rt, pt, ref), per_channel):
        rows = slice(first, first + len(x))
        d = np.where(np.isfinite(r), r - p, 0.0)
        xm = x - mean_x[rows, None]
        sxx[rows] += np.sum(xm * xm, axis=1)
        sxd[rows] += np.sum(xm * d, axis=1)
        flat = x - mean_all
        sxx_all += float(np.sum(flat * flat))
        sxd_all += float(np.sum(flat * d))
    sqnr_pt, sqnr_rt = _sqnr(signal, noise_pt), _sqnr(signal, noise_rt)
    budget = max(noise_pt, signal * 10 ** (-CEILING_DB / 10), 1e-30)
    slope = np.divide(sxd, sxx, out=np.zeros_like(sxd), where=sxx > 0)
    mean_d = sum_d / max(count, 1)
    systematic = float(np.sum(mean_d ** 2) * count + np.sum(slope * slope * sxx)) if size else 0.0
    return {
        **steps,
        "sqnr_pytorch_db": sqnr_pt,
        "sqnr_runtime_db": sqnr_rt if finite else float("-inf"),
        "sqnr_loss_db": (sqnr_pt - sqnr_rt) if finite else float("inf"),
        "systematic_db": 10 * np.log10(max(systematic, 1e-30) / budget) if finite else float("inf"),
        "bias_steps": float(sum_d.sum() / size / steps["output_step"]) if size else 0.0,
        "gain": sxd_all / sxx_all if sxx_all > 0 else 0.0,
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
