"""What both report files show (:class:`ReportData`) and the cell formatting they share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..quant.precision import of_metrics

WORST_LAYERS_LISTED = 15  # rows of report.md's per-layer table (the full list: metrics.json layer_sqnr)
EXPORT_COLUMNS = ["path", "format", "status", "sqnr_pytorch_db", "sqnr_runtime_db", "systematic_db",
                  "max_diff_steps", "frac_over_1_step", "seconds"]


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "inf" if math.isinf(value) and value > 0 else ("-inf" if math.isinf(value) else f"{value:.4g}")
    return str(value)


def layer_db(item: dict, key: str = "output_db") -> str:
    """A per-layer SQNR cell: ``inf`` when identical to FP32."""
    identical = item["identical"] if key == "output_db" else item.get("input_identical", False)
    if item[key] is None:
        return "inf" if identical else "-"
    return f"{item[key]:.2f}"


@dataclass
class Figure:
    title: str
    caption: str
    png: bytes
    file_name: str | None = None  # written beside report.md when set


@dataclass
class ReportData:
    """Everything both report files show."""

    recipe: str
    version: str
    description: str
    metrics: dict[str, Any]
    calibration: str
    quantizers: list[dict[str, Any]]  # worst SQNR first
    layers: list[dict[str, Any]]  # execution order
    histograms: list[Figure] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)  # per-layer SQNR, tune search

    @property
    def precision(self) -> str:
        """The quantized model's label: ``INT8``, ``FP8 E4M3``, ``INT8+FP8 E4M3``."""
        return of_metrics(self.metrics)

    @property
    def failure(self) -> dict | None:
        return self.metrics.get("failure") if self.metrics.get("status") == "failed" else None

    def metric_rows(self) -> tuple[list[str], list[list[str]]]:
        """``metric | FP32 | INT8 | drop [| QAT | QAT drop]`` (drop = FP32 - INT8; INT8: the run's precision)."""
        qat = self.metrics.get("qat") or {}
        header = ["metric", "FP32", self.precision, "drop", *(["QAT", "QAT drop"] if qat else [])]
        splits = [("", self.metrics)]
        if self.metrics.get("test") and self.metrics.get("validation"):  # reported on test, selected on validation
            splits = [(" (test)", self.metrics["test"]), (" (validation, selection)", self.metrics["validation"])]
        rows = []
        for suffix, phases in splits:
            fp32, int8, qat = (phases.get(k) or {} for k in ("fp32", "int8", "qat"))
            for key in dict.fromkeys([*fp32, *int8]):
                row = [key + suffix, fmt(fp32.get(key)), fmt(int8.get(key)), _drop(fp32.get(key), int8.get(key))]
                if header[-1] == "QAT drop":
                    row += [fmt(qat.get(key)), _drop(fp32.get(key), qat.get(key))]
                rows.append(row)
        return header, rows

    def summary_rows(self) -> list[tuple[str, str]]:
        m = self.metrics
        return [("status", str(m.get("status", "ok"))), ("recipe sha256", str(m.get("sha256", ""))),
                ("precision", self.precision), ("quantizers enabled", fmt(m.get("quantizers"))), ("quantizers disabled", fmt(m.get("disabled"))),
                ("share groups", fmt(m.get("shared_groups", 0))), ("fusions", fmt(m.get("fused", 0))),
                ("calibration", self.calibration),
                *([("reported split", "data.test (tune and keep_best chose on data.validation)")]
                  if m.get("reported_split") == "test" else []),
                *([("reported split", "the calibration batches (data.validation is not set)")]
                  if m.get("reported_split") == "calibration" else [])]

    def worst_layers(self, count: int = WORST_LAYERS_LISTED) -> list[dict]:
        def key(item: dict) -> float:
            return math.inf if item["output_db"] is None else item["output_db"]

        return sorted(self.layers, key=key)[:count]

    def entry_points(self, count: int = 3) -> list[dict]:
        """The layers that lose the most SQNR themselves (input - output): where the error enters."""
        losses = [item for item in self.layers if item.get("loss_db") is not None]
        return sorted(losses, key=lambda item: -item["loss_db"])[:count]


def _drop(fp32: Any, int8: Any) -> str:
    if not isinstance(fp32, (int, float)) or not isinstance(int8, (int, float)):
        return "-"
    return f"{fp32 - int8:+.4g}"
