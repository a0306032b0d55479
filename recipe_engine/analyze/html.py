"""``report.html``: the run's report as one self-contained page.

Everything is inside the file: inline CSS, figures as ``data:image/png;base64`` URIs, no scripts,
no links or sources outside the page (only ``#section`` anchors), so it can be mailed or archived
as is. All text from the recipe, the model and the metrics is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from .report_data import EXPORT_COLUMNS, Figure, ReportData, layer_db

STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#26374d;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#cdd6e2}
nav{padding:8px 28px;background:#e9edf2;font-size:13px} nav a{margin-right:14px;color:#26374d}
main{padding:8px 28px 40px;max-width:1200px}
h2{border-bottom:1px solid #ccd;padding-bottom:4px;margin-top:28px;font-size:18px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d5d9e0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.off td{color:#6b7a6b;background:#f1f6f1}
.ok{color:#1d7a36;font-weight:600}.skipped{color:#9a6a00;font-weight:600}.failed{color:#b3261e;font-weight:600}
.banner{background:#fde8e6;border:1px solid #b3261e;padding:10px 14px;margin:14px 0;white-space:pre-wrap}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0}
.card{background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:8px 14px;min-width:150px}
.card b{display:block;font-size:20px} .card span{font-size:12px;color:#555}
figure{margin:10px 0;background:#fff;border:1px solid #d5d9e0;padding:6px;display:inline-block}
figcaption{font-size:12px;color:#555} .note{font-size:13px;color:#444}
details summary{cursor:pointer;font-size:13px;margin:6px 0}
"""

SECTIONS = [("metrics", "Metrics"), ("exports", "Exports"), ("layers", "Per-layer SQNR"),
            ("histograms", "Calibration histograms"), ("tune", "Tune"), ("quantizers", "Quantizers"),
            ("timings", "Timings")]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(item: Figure) -> str:
    return (f'<figure><img alt="{esc(item.title)}" src="{png_uri(item.png)}">'
            f"<figcaption>{esc(item.title)}: {esc(item.caption)}</figcaption></figure>")


def table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None,
          row_classes: list[str] | None = None) -> str:
    """A table of escaped cells; a cell given as ``("html", markup)`` is inserted as is."""
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        cells = []
        for column, cell in enumerate(row):
            text = cell[1] if isinstance(cell, tuple) and cell[0] == "html" else esc(cell)
            cells.append(f'<td class="num">{text}</td>' if column in numeric else f"<td>{text}</td>")
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _number(value: Any, digits: str = ".4g") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return format(value, digits) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _status(entry: dict) -> tuple[str, str]:
    status = str(entry.get("status", "?"))
    why = entry.get("reason") or entry.get("error") or ""
    text = f'<span class="{esc(status)}">{esc(status)}</span>'
    if why:
        text += f" ({esc(str(why).removeprefix('skipped: '))})"
    return ("html", text)


def _cards(data: ReportData) -> str:
    cards = []
    header, rows = data.metric_rows()
    for row in rows[:3]:
        cards.append((f"{row[0]} FP32 {row[1]} / {data.precision} {row[2]}", f"drop {row[3]}"))
    worst = data.worst_layers(1)
    if worst:
        item = worst[0]
        value = "inf" if item["output_db"] is None else f"{item['output_db']:.2f} dB"
        cards.append((value, f"worst layer output SQNR: {item['name']}"))
    exports = data.metrics.get("exports") or []
    if exports:
        done = sum(1 for e in exports if e.get("status") == "ok")
        cards.append((f"{done} / {len(exports)}", "exports verified"))
    return '<div class="cards">' + "".join(f"<div class=\"card\"><b>{esc(a)}</b><span>{esc(b)}</span></div>"
                                           for a, b in cards) + "</div>"


def _exports(data: ReportData) -> str:
    exports = data.metrics.get("exports") or []
    if not exports:
        return '<p class="note">(no exports)</p>'
    rows = [[_status(e) if c == "status" else _number(e.get(c)) for c in EXPORT_COLUMNS] for e in exports]
    notes = "".join(f"<li>{esc(e['path'])}: {esc(n)}</li>" for e in exports for n in (e.get("notes") or []))
    return ('<p class="note">Verified on captured calibration inputs: SQNR vs FP32 of PyTorch fake-quant and of '
            "the runtime, the runtime's systematic error, and its differences from PyTorch in output steps "
            "(output range / 255).</p>"
            + table(EXPORT_COLUMNS, rows, numeric=set(range(3, len(EXPORT_COLUMNS))))
            + (f"<details><summary>notes</summary><ul>{notes}</ul></details>" if notes else ""))


def _layers(data: ReportData) -> str:
    if not data.layers:
        return '<p class="note">(no quantized layers ran on the batch)</p>'
    parts = [figure(f) for f in data.figures if f.file_name == "layer_sqnr.png"]
    entries = data.entry_points()
    if entries:
        parts.append('<p class="note">Largest losses inside one layer (input - output SQNR): ' + ", ".join(
            f"{esc(i['name'])} ({i['loss_db']:.2f} dB)" for i in entries) + ".</p>")
    parts.append('<p class="note">Every quantized layer and op site in execution order: SQNR (dB) of its input and '
                 "output in the quantized model vs the same tensors of the FP32 model on the first calibration "
                 "batch (sparse tensors: features at the same active sites). Green rows run in full precision.</p>")
    rows = [[i["index"], i["name"], i["type"], "yes" if i["quantized"] else "no", layer_db(i, "input_db"),
             layer_db(i), "-" if i.get("loss_db") is None else f"{i['loss_db']:.2f}", i["calls"], i["elements"]]
            for i in data.layers]
    classes = ["" if i["quantized"] else "off" for i in data.layers]
    parts.append(table(["#", "layer", "type", "quantized", "input dB", "output dB", "loss dB", "calls", "values"],
                       rows, numeric={0, 4, 5, 6, 7, 8}, row_classes=classes))
    return "".join(parts)


def _quantizers(data: ReportData) -> str:
    rows = [[q["name"], q["kind"], "yes" if q["enabled"] else "no", _number(q["sqnr_db"]), _number(q["amax"]),
             "" if q["clipped"] is None else f"{q['clipped']:.3%}"] for q in data.quantizers]
    classes = ["" if q["enabled"] else "off" for q in data.quantizers]
    return ('<p class="note">SQNR of each quantizer\'s output vs its input on the first calibration batch (disabled '
            "ones measured as if enabled), worst first; clipped: share of the calibration histogram above amax.</p>"
            + table(["quantizer", "kind", "enabled", "SQNR dB", "amax", "clipped"], rows, numeric={3, 4, 5},
                    row_classes=classes))


def _tune(data: ReportData) -> str:
    tune = data.metrics.get("tune")
    if not tune:
        return ""
    verdict = "within the allowed drop" if tune["success"] else "NOT within the allowed drop"
    text = (f'<p class="note">{esc(tune["metric"])}: FP32 {_number(tune["fp32"])}, final {_number(tune["final"])}, '
            f"drop {_number(tune['drop'])} (allowed {_number(tune['allowed_drop'])}), {verdict}; "
            f"{tune['evaluations']} evaluations. Left in full precision: "
            f"{esc(', '.join(tune['disabled_groups']) or '-')}.</p>")
    return text + "".join(figure(f) for f in data.figures if f.file_name == "tune.png")


def render_html(data: ReportData) -> str:
    m = data.metrics
    title = f"{data.recipe} {data.version}"
    body = [f"<header><h1>{esc(title)}</h1><p>{esc(data.description)}</p></header>"]
    present = [(key, label) for key, label in SECTIONS if key != "tune" or m.get("tune")]
    body.append("<nav>" + "".join(f'<a href="#{key}">{esc(label)}</a>' for key, label in present) + "</nav><main>")
    failure = data.failure
    if failure:
        body.append(f'<div class="banner"><b>FAILED during {esc(failure.get("stage"))}</b>\n'
                    f"{esc(failure.get('error'))}</div>")
    body.append(_cards(data))
    body.append(table(["", "value"], data.summary_rows()))
    header, rows = data.metric_rows()
    body.append('<h2 id="metrics">Metrics</h2>'
                + (table(header, rows, numeric=set(range(1, len(header)))) if rows
                   else '<p class="note">(no data.evaluate)</p>'))
    body.append(f'<h2 id="exports">Exports</h2>{_exports(data)}')
    body.append(f'<h2 id="layers">Per-layer output SQNR vs FP32</h2>{_layers(data)}')
    body.append('<h2 id="histograms">Calibration histograms</h2><p class="note">The worst-SQNR activations and the '
                "most clipped ones, with the chosen amax (dashed).</p>"
                + ("".join(figure(h) for h in data.histograms) or '<p class="note">(no histogram calibrators)</p>'))
    if m.get("tune"):
        body.append(f'<h2 id="tune">Tune</h2>{_tune(data)}')
    body.append(f'<h2 id="quantizers">Quantizers</h2>{_quantizers(data)}')
    timings = [[k.removesuffix("_seconds"), f"{v:.2f}"] for k, v in (m.get("timings") or {}).items()]
    body.append('<h2 id="timings">Timings</h2>' + table(["step", "seconds"], timings, numeric={1}))
    body.append("</main>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
