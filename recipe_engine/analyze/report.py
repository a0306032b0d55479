"""The run's report: ``report.md`` (with histogram PNG files) and a self-contained ``report.html``.

:func:`write_report` measures what the report shows on the first calibration batch (per-quantizer
SQNR, per-layer output SQNR vs FP32 unless the pipeline measured it already, clipping of the
calibration histograms), gathers it with the run's metrics into a :class:`ReportData` and writes
both files from it (``report.md`` here, ``report.html`` by :mod:`.html`; figures by :mod:`.plots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..quant import backend
from ..quant.apply import get_state
from ..quant.precision import of_metrics
from ..recipe.loader import LoadedRecipe
from ..util.atomic import atomic_write_bytes, atomic_write_text
from . import plots
from .fidelity import measure_fidelity
from .report_data import EXPORT_COLUMNS, WORST_LAYERS_LISTED, Figure, ReportData, fmt, layer_db

WORST_SQNR_PLOTTED = 3  # calibration histograms of the worst-SQNR activations ...
MOST_CLIPPED_PLOTTED = 2  # ... and of the most clipped others


def _statistics(quantizer: Any) -> tuple[Any, Any, float] | None:
    """(hist, edges, amax) of a histogram-calibrated quantizer, else None."""
    if not backend.is_histogram(quantizer):
        return None
    stats = backend.calibration_statistics(quantizer)
    amax = backend.get_amax(quantizer)
    if stats is None or amax is None or "hist" not in stats:
        return None
    return stats["hist"], stats["edges"], float(amax.max())


def _file_name(name: str) -> str:
    return "hist_" + "".join(c if c.isalnum() else "_" for c in name.split(" = ")[0]) + ".png"


def gather(model: nn.Module, loaded: LoadedRecipe, metrics: dict[str, Any], batch: Any,
           forward: Callable) -> ReportData:
    """Measure (one batch, two or three forwards) and collect what the report shows."""
    spec = loaded.spec
    state = get_state(model)
    by_name = {" = ".join(names): q for names, q in state.unique()}
    quantizers, stats = [], {}
    for item in sorted(measure_fidelity(model, batch, forward), key=lambda f: (math.isnan(f.sqnr_db), f.sqnr_db)):
        found = _statistics(by_name[item.name]) if item.kind != "weight" else None
        clipped = plots.clipped_fraction(*found) if found else None
        if found:
            stats[item.name] = found
        quantizers.append({"name": item.name, "kind": item.kind, "enabled": item.enabled, "sqnr_db": item.sqnr_db,
                           "amax": item.amax, "clipped": clipped})
    layers = metrics.get("layer_sqnr")
    if layers is None:
        from .layers import measure_layers

        layers = [item.as_dict() for item in measure_layers(model, batch, forward)]
    calibration = (f"{spec.calibration.method}, {metrics.get('calibration_batches')} batches, "
                   f"{metrics.get('calibration_seconds', 0.0):.2f} s")
    data = ReportData(spec.recipe, spec.version, spec.description or "", metrics, calibration, quantizers, layers)
    chosen = [q["name"] for q in quantizers if q["name"] in stats][:WORST_SQNR_PLOTTED]
    by_clipping = sorted((q for q in quantizers if q["name"] in stats and q["name"] not in chosen),
                         key=lambda q: -q["clipped"])
    chosen += [q["name"] for q in by_clipping[:MOST_CLIPPED_PLOTTED] if q["clipped"] > 0]
    for name in chosen:
        hist, edges, amax = stats[name]
        clipped = plots.clipped_fraction(hist, edges, amax)
        data.histograms.append(Figure(name, f"amax {amax:.4g}, {clipped:.3%} of the calibration values clipped",
                                      plots.histogram_png(name, hist, edges, amax), _file_name(name)))
    if layers:
        data.figures.append(Figure("Per-layer SQNR vs FP32", "output (blue) and input (grey) SQNR of every quantized "
                                   "layer and op site, in execution order", plots.layer_sqnr_png(layers),
                                   "layer_sqnr.png"))
    if metrics.get("tune"):
        data.figures.append(Figure("Tune search", "the metric after each group the search left in full precision",
                                   plots.tune_png(metrics["tune"], of_metrics(metrics)), "tune.png"))
    return data


def write_report(model: nn.Module, loaded: LoadedRecipe, out: Path, metrics: dict[str, Any], batch: Any,
                 forward: Callable) -> Path:
    """Write ``report.md`` (with its PNGs) and ``report.html`` into the run directory ``out``."""
    from .html import render_html

    data = gather(model, loaded, metrics, batch, forward)
    for figure in data.histograms + data.figures:
        if figure.file_name:
            atomic_write_bytes(out / figure.file_name, figure.png)
    atomic_write_text(out / "report.html", render_html(data))
    target = out / "report.md"
    atomic_write_text(target, render_markdown(data))
    return target


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def render_markdown(data: ReportData) -> str:
    m = data.metrics
    lines = [f"# {data.recipe} {data.version}", "", data.description, "",
             f"Recipe sha256 `{m.get('sha256', '')}`. Also as a self-contained page: `report.html`.", "",
             "## Summary", ""]
    lines += _table(["", "value"], [[k, v] for k, v in data.summary_rows()[2:]])
    header, rows = data.metric_rows()
    if rows:
        lines += ["", "## Metrics", "", *_table(header, rows)]
    lines += ["", "## Per-layer output SQNR vs FP32", ""]
    if data.layers:
        lines += [f"SQNR in dB of each quantized layer's and op site's output (and input) in the quantized model vs "
                  f"the same tensor in the FP32 model on the first calibration batch; sparse tensors on their "
                  f"active sites. `loss` = input - output: what the layer itself costs. The "
                  f"{min(WORST_LAYERS_LISTED, len(data.layers))} worst outputs of {len(data.layers)} (all of them in "
                  "execution order: `layer_sqnr` in metrics.json, and report.html).", ""]
        lines += _table(["#", "layer", "type", "quantized", "input dB", "output dB", "loss dB"],
                        [[str(i["index"]), i["name"], i["type"], fmt(i["quantized"]), layer_db(i, "input_db"),
                          layer_db(i), layer_db(i, "loss_db") if i.get("loss_db") is not None else "-"]
                         for i in data.worst_layers()])
        entries = data.entry_points()
        if entries:
            lines += ["", "Largest losses inside one layer: " + ", ".join(
                f"{i['name']} ({i['loss_db']:.2f} dB)" for i in entries) + "."]
        lines += ["", "![per-layer SQNR](layer_sqnr.png)"]
    else:
        lines.append("(no quantized layers ran on the batch)")
    lines += ["", "## Per-quantizer fidelity", "",
              "SQNR in dB of each quantizer's output vs its input, on the first calibration batch "
              "(disabled quantizers are measured as if enabled); `clipped`: share of the calibration "
              "histogram above amax.", ""]
    lines += _table(["quantizer", "kind", "enabled", "SQNR dB", "amax", "clipped"],
                    [[q["name"], q["kind"], fmt(q["enabled"]), fmt(q["sqnr_db"]), fmt(q["amax"]),
                      "" if q["clipped"] is None else f"{q['clipped']:.3%}"] for q in data.quantizers])
    lines += ["", "## Calibration histograms", "",
              "The worst-SQNR activations and the most clipped ones, with the chosen amax.", ""]
    lines += [f"![{h.title}]({h.file_name})\n\n{h.title}: {h.caption}\n" for h in data.histograms] or \
        ["(no histogram calibrators)"]
    if m.get("tune"):
        tune = m["tune"]
        lines += ["", "## Tune", "", f"{tune['metric']}: FP32 {fmt(tune['fp32'])}, final {fmt(tune['final'])}, "
                  f"drop {fmt(tune['drop'])} (allowed {fmt(tune['allowed_drop'])}), "
                  f"{'success' if tune['success'] else 'NOT within budget'}; disabled: "
                  f"{', '.join(tune['disabled_groups']) or '-'}.", "", "![tune](tune.png)"]
    lines += ["", "## Exports", ""]
    if m.get("exports"):
        lines += ["Verification on captured calibration inputs: SQNR vs FP32 of PyTorch fake-quant and of the runtime, "
                  "the runtime's systematic error (dB of the quantization noise), and its differences from PyTorch "
                  "in output steps (output range / 255; all figures in metrics.json).", ""]
        lines += _table(EXPORT_COLUMNS, [[fmt(e.get(k)) for k in EXPORT_COLUMNS] for e in m["exports"]])
        lines += [f"- {e['path']}: {e.get('reason') or e.get('error')}" for e in m["exports"]
                  if e.get("reason") or e.get("error")]
    else:
        lines.append("(no exports)")
    lines += ["", "## Timings", ""]
    lines += _table(["step", "seconds"], [[k.removesuffix("_seconds"), f"{v:.2f}"]
                                          for k, v in (m.get("timings") or {}).items()])
    return "\n".join(lines) + "\n"
