"""What a quantized model's numbers are called: ``INT8``, ``FP8 E4M3``, or a mix (``INT8+FP8 E4M3``).

The run's summary, ``report.md`` and ``metrics.json`` (``precision``) name the quantized model's
column with this label; the metrics stay under ``int8`` in ``metrics.json`` for its readers.
"""

from __future__ import annotations

from . import backend

FORMAT_LABELS = {"fp8_e4m3": "FP8 E4M3"}
DEFAULT = "INT8"  # the label of metrics written before ``precision`` was recorded


def format_label(info: dict) -> str:
    """``INT8`` for an 8-bit integer quantizer, ``INT4`` for 4 bits, ``FP8 E4M3`` for E4M3."""
    fmt = info.get("format", "int")
    if fmt == "int":
        return f"INT{info.get('num_bits', 8)}"
    return FORMAT_LABELS.get(fmt, str(fmt).upper())


def precision_label(state) -> str:
    """The formats of the state's enabled quantizers, integers first, joined by ``+``."""
    found = {format_label(backend.describe(q)) for _, q in state.unique() if backend.is_enabled(q)}
    if not found:
        return "no quantizers enabled"
    return "+".join(sorted(found, key=lambda label: (not label.startswith("INT"), label)))


def of_metrics(metrics: dict) -> str:
    """The label a metrics dict was recorded with (``INT8`` for one that predates it)."""
    return str(metrics.get("precision") or DEFAULT)
