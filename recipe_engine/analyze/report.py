"""``report.md`` for every run: summary, per-quantizer SQNR, calibration histograms, exports, timings."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..quant import backend
from ..quant.apply import get_state
from ..recipe.loader import LoadedRecipe
from ..util.atomic import atomic_path, atomic_write_text
from .fidelity import measure_fidelity

WORST_LAYERS_PLOTTED = 4


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}"
    return str(value)


def _histogram_plot(out: Path, name: str, quantizer: Any) -> str | None:
    """Write a PNG of the quantizer's calibration histogram with amax marked; return its file name."""
    if not backend.is_histogram(quantizer):
        return None
    stats = backend.calibration_statistics(quantizer)
    amax = backend.get_amax(quantizer)
    if stats is None or amax is None:
        return None
    hist, edges = stats["hist"], stats["edges"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = hist.detach().cpu().float().numpy()
    edge_values = edges.detach().cpu().float().numpy()[: len(counts) + 1]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.stairs(counts, edge_values, fill=True, color="#4c72b0")  # one patch, not one bar per bin
    axis.set_yscale("log")
    axis.axvline(float(amax.max()), color="#c44e52", linestyle="--", label=f"amax {float(amax.max()):.4g}")
    axis.set_title(name, fontsize=9)
    axis.set_xlabel("|x|")
    axis.legend(fontsize=8)
    figure.tight_layout()
    file_name = "hist_" + "".join(c if c.isalnum() else "_" for c in name.split(" = ")[0]) + ".png"
    with atomic_path(out / file_name) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
    return file_name


def write_report(model: nn.Module, loaded: LoadedRecipe, out: Path, metrics: dict[str, Any], batch: Any,
                 forward: Callable) -> Path:
    """Write ``report.md`` (and histogram PNGs) into the run directory ``out``."""
    spec = loaded.spec
    state = get_state(model)
    fidelity = measure_fidelity(model, batch, forward)
    lines = [f"# {spec.recipe} {spec.version}", "", spec.description or "", "",
             f"Recipe sha256 `{metrics['sha256']}`.", "", "## Summary", "", "| | value |", "|---|---|"]
    lines.append(f"| quantizers enabled | {metrics['quantizers']} |")
    lines.append(f"| quantizers disabled | {metrics['disabled']} |")
    lines.append(f"| share groups | {metrics.get('shared_groups', 0)} |")
    lines.append(f"| fusions | {metrics.get('fused', 0)} |")
    lines.append(f"| calibration | {spec.calibration.method}, {metrics.get('calibration_batches')} batches, "
                 f"{metrics['calibration_seconds']:.2f} s |")
    for phase in ("fp32", "int8", "qat"):
        for key, value in (metrics.get(phase) or {}).items():
            lines.append(f"| {phase} {key} | {_fmt(value)} |")
    if metrics.get("fp32") and metrics.get("int8"):
        for key in metrics["fp32"]:
            if key in metrics["int8"]:
                lines.append(f"| int8 - fp32 {key} | {_fmt(metrics['int8'][key] - metrics['fp32'][key])} |")
    if metrics.get("test") and metrics.get("validation"):  # the figures above are the test ones
        lines.append("| reported split | data.test (tune and keep_best chose on data.validation) |")
        for phase in ("fp32", "int8", "qat"):
            for key, value in (metrics["validation"].get(phase) or {}).items():
                lines.append(f"| validation {phase} {key} | {_fmt(value)} |")
    lines += ["", "## Per-quantizer fidelity", "",
              "SQNR in dB of each quantizer's output vs its input, on the first calibration batch "
              "(disabled quantizers are measured as if enabled).", "",
              "| quantizer | kind | enabled | SQNR dB | amax |", "|---|---|---|---|---|"]
    ranked = sorted(fidelity, key=lambda f: (math.isnan(f.sqnr_db), f.sqnr_db))
    for item in ranked:
        lines.append(f"| {item.name} | {item.kind} | {'yes' if item.enabled else 'no'} | {_fmt(item.sqnr_db)} | "
                     f"{_fmt(item.amax)} |")
    lines += ["", "## Calibration histograms of the worst activations", ""]
    plotted = 0
    by_name = {" = ".join(names): q for names, q in state.unique()}
    for item in ranked:
        if plotted >= WORST_LAYERS_PLOTTED or item.kind == "weight":
            continue
        image = _histogram_plot(out, item.name, by_name[item.name])
        if image:
            lines.append(f"![{item.name}]({image})")
            lines.append("")
            plotted += 1
    if not plotted:
        lines.append("(no histogram calibrators)")
    lines += ["", "## Exports", ""]
    if metrics.get("exports"):
        columns = ["path", "format", "status", "sqnr_pytorch_db", "sqnr_runtime_db", "systematic_db",
                   "max_diff_steps", "frac_over_1_step", "seconds"]
        lines += ["Verification on captured calibration inputs: SQNR vs FP32 of PyTorch fake-quant and of the runtime, "
                  "the runtime's systematic error (dB of the quantization noise), and its differences from PyTorch "
                  "in output steps (output range / 255; all figures in metrics.json).", "",
                  "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for entry in metrics["exports"]:
            lines.append("| " + " | ".join(_fmt(entry.get(k)) if entry.get(k) is not None else "" for k in columns)
                         + " |")
        lines += [f"- {e['path']}: {e['reason']}" for e in metrics["exports"] if e.get("reason")]
    else:
        lines.append("(no exports)")
    lines += ["", "## Timings", "", "| step | seconds |", "|---|---|"]
    for key, value in (metrics.get("timings") or {}).items():
        lines.append(f"| {key.removesuffix('_seconds')} | {value:.2f} |")
    target = out / "report.md"
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target


