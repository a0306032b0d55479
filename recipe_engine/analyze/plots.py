"""The report's figures as PNG bytes (matplotlib, Agg backend): calibration histograms, per-layer SQNR,
the tune search and the sensitivity chart. Callers write them to files (report.md, sensitivity.png)
or embed them (report.html)."""

from __future__ import annotations

import io
import math
from typing import Any

import torch

BLUE, RED, GREY, GREEN = "#4c72b0", "#c44e52", "#8c8c8c", "#55a868"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def clipped_fraction(hist: torch.Tensor, edges: torch.Tensor, amax: float) -> float:
    """Share of the calibration histogram's mass above ``amax`` (values clipped by the chosen range)."""
    counts = hist.detach().double().cpu()
    total = float(counts.sum())
    if total <= 0.0:
        return 0.0
    edge = edges.detach().double().cpu()[: len(counts) + 1]
    left, right = edge[:-1], edge[1:]
    width = (right - left).clamp(min=1e-30)
    above = ((right - amax) / width).clamp(0.0, 1.0)  # a bin straddling amax counts in proportion
    return float((counts * above).sum()) / total


def histogram_png(name: str, hist: torch.Tensor, edges: torch.Tensor, amax: float) -> bytes:
    """The calibration histogram (log counts over |x|) with the chosen amax as a dashed line."""
    plt = _pyplot()
    counts = hist.detach().cpu().float().numpy()
    edge_values = edges.detach().cpu().float().numpy()[: len(counts) + 1]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.stairs(counts, edge_values, fill=True, color=BLUE)  # one patch, not one bar per bin
    axis.set_yscale("log")
    clipped = clipped_fraction(hist, edges, amax)
    axis.axvline(amax, color=RED, linestyle="--", label=f"amax {amax:.4g} ({clipped:.3%} clipped)")
    axis.set_title(name, fontsize=9)
    axis.set_xlabel("|x|")
    axis.legend(fontsize=8)
    return _png(figure)


def layer_sqnr_png(layers: list[dict]) -> bytes:
    """Output (and input) SQNR vs FP32 of each quantized layer and op site, in execution order."""
    plt = _pyplot()
    finite = [v for item in layers for v in (item["output_db"], item["input_db"]) if v is not None]
    top = (max(finite) if finite else 60.0) + 5.0  # identical-to-FP32 (inf) points are drawn on this line
    xs = [item["index"] for item in layers]

    def values(key: str, identical: str) -> list[float]:
        return [top if item[identical] else (item[key] if item[key] is not None else math.nan) for item in layers]

    outputs = values("output_db", "identical")
    inputs = values("input_db", "input_identical")
    figure, axis = plt.subplots(figsize=(9, 3.6))
    axis.plot(xs, inputs, color=GREY, linewidth=0.8, marker=".", markersize=3, label="input SQNR")
    axis.plot(xs, outputs, color=BLUE, linewidth=1.2, label="output SQNR")
    quantized = [(x, y) for x, y, item in zip(xs, outputs, layers, strict=True) if item["quantized"]]
    plain = [(x, y) for x, y, item in zip(xs, outputs, layers, strict=True) if not item["quantized"]]
    if quantized:
        axis.scatter(*zip(*quantized, strict=True), color=BLUE, s=14, zorder=3, label="quantized")
    if plain:
        axis.scatter(*zip(*plain, strict=True), color=GREEN, marker="s", s=14, zorder=3, label="full precision")
    if any(item["identical"] or item.get("input_identical") for item in layers):
        axis.axhline(top, color=GREEN, linewidth=0.6, linestyle=":")
        axis.text(xs[0], top, " identical to FP32", fontsize=7, va="bottom", color=GREEN)
    axis.set_xlabel("layer / op site in execution order")
    axis.set_ylabel("SQNR vs FP32 (dB)")
    axis.set_ylim(bottom=min([v for v in outputs + inputs if not math.isnan(v)], default=0.0) - 5.0, top=top + 4.0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    return _png(figure)


def tune_png(tune: dict, precision: str = "INT8") -> bytes:
    """The metric after each step of the tune search (groups left in full precision), with the target."""
    plt = _pyplot()
    steps = tune["steps"]
    labels = [f"all {precision}"] + [step["disabled"][-1] for step in steps[1:]]
    figure, axis = plt.subplots(figsize=(8, max(2.5, 0.3 * len(steps) + 1.2)))
    metric = [step["metric"] for step in steps]
    axis.barh(range(len(steps))[::-1], metric, color=[GREY] + [BLUE] * (len(steps) - 1))
    axis.set_yticks(range(len(steps))[::-1], labels, fontsize=7)
    fp32, allowed = tune["fp32"], tune["allowed_drop"]
    axis.axvline(fp32, color=GREEN, linestyle="-", label=f"FP32 {fp32:.4g}")
    axis.axvspan(fp32 - allowed, fp32 + allowed, color=GREEN, alpha=0.12, label=f"allowed drop {allowed:.4g}")
    low = min([*metric, fp32 - allowed])
    high = max([*metric, fp32 + allowed])
    axis.set_xlim(low - 0.1 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
    axis.set_xlabel(f"{tune['metric']} after disabling the group (cumulative)")
    axis.legend(fontsize=7)
    return _png(figure)


def sensitivity_png(rows: list[Any], metric: str) -> bytes:
    """Bars: the metric gained by leaving each group in full precision (the 30 most sensitive)."""
    plt = _pyplot()
    rows = rows[:30]
    figure, axis = plt.subplots(figsize=(8, max(2.5, 0.28 * len(rows) + 1)))
    axis.barh([r.group for r in rows][::-1], [r.gain_if_disabled for r in rows][::-1], color=BLUE)
    axis.set_xlabel(f"{metric} gained by leaving the group in full precision")
    axis.tick_params(axis="y", labelsize=7)
    return _png(figure)
