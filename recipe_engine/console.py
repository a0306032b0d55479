"""What ``recipe run`` and ``recipe inspect`` print: the stage lines, the summary table, a model file's contents.

:class:`Story` receives the run's stages from ``pipeline._run_recipe`` (``begin`` when a stage
starts, ``detail`` for its key figure) and prints one line per stage on stderr when it ends, with
its duration. :func:`print_summary` prints the final table (rich) on stdout.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import click

#: Stage-line label column: fits the longest built-in label, ``INT8+FP8 E4M3 evaluation``.
LABEL_WIDTH = 24
STAGE_LABELS = {
    "model": "build model", "data": "load data", "export_check": "export check", "evaluate_fp32": "FP32 evaluation", "apply": "apply",
    "calibration": "calibration", "evaluate_int8": "INT8 evaluation", "tune": "tune", "qat": "QAT",
    "save": "save", "export": "export", "report": "report", "layer_sqnr": "layer SQNR",
}


def figures(values: Any) -> str:
    """``top1 99.72, loss 0.1``: a metrics dict on one line."""
    if not isinstance(values, dict):
        return str(values)
    return ", ".join(f"{k} {fmt_number(v)}" for k, v in values.items())


class NullStory:
    """The stage receiver of a run that prints nothing (Python API callers)."""

    def begin(self, stage: str) -> None: ...
    def name_stage(self, label: str) -> None: ...
    def detail(self, text: str) -> None: ...
    def export(self, result: dict) -> None: ...
    def end(self) -> None: ...
    def failed(self, exc: BaseException) -> None: ...
    def failure_summary(self, metrics: dict, record: Path) -> None: ...

    def warn(self, text: str) -> None:
        warnings.warn(text, RuntimeWarning, stacklevel=2)


class Story:
    """One line per finished stage on stderr (nothing when ``quiet``; only rank 0 under torchrun)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.stage: str | None = None
        self.label: str | None = None  # the stage's printed name when not STAGE_LABELS' (name_stage)
        self.started = 0.0
        self.details: list[str] = []
        self.lines: list[str] = []  # what was printed, for tests and the failure line

    def _say(self, text: str) -> None:
        from .train.distributed import is_main

        if self.quiet or not is_main():
            return
        self.lines.append(text)
        click.echo(text, err=True)

    def begin(self, stage: str) -> None:
        """End the current stage (printing its line) and start ``stage``."""
        self.end()
        self.stage, self.started, self.details, self.label = stage, time.perf_counter(), [], None

    def name_stage(self, label: str) -> None:
        """Print the current stage's line as ``label`` (``FP8 E4M3 evaluation`` for ``evaluate_int8``)."""
        self.label = label

    def detail(self, text: str) -> None:
        self.details.append(text)

    def warn(self, text: str) -> None:
        """A ``warning:`` line on stderr (after the current stage's line when one is running)."""
        self.end()
        self._say(f"warning: {text}")

    def end(self) -> None:
        if self.stage is None:
            return
        seconds = time.perf_counter() - self.started
        label = self.label or STAGE_LABELS.get(self.stage, self.stage)
        extra = f"  {', '.join(self.details)}" if self.details else ""
        self._say(f"{label:<{LABEL_WIDTH}} {seconds:7.2f} s{extra}")
        self.stage = None

    def export(self, result: dict) -> None:
        """One line for an export entry as soon as it is done: status, verification figures, seconds."""
        seconds = f"{result['seconds']:.2f} s" if isinstance(result.get("seconds"), (int, float)) else ""
        parts = [f"  {result['path']} {export_status(result)}", export_figures(result), seconds]
        self._say("  ".join(p for p in parts if p))

    def failed(self, exc: BaseException) -> None:
        """The current stage's line, marked FAILED (the error itself is printed by the command)."""
        if self.stage is None:
            return
        seconds = time.perf_counter() - self.started
        label = self.label or STAGE_LABELS.get(self.stage, self.stage)
        self._say(f"{label:<{LABEL_WIDTH}} {seconds:7.2f} s  FAILED")
        self.stage = None


    def failure_summary(self, metrics: dict, record: Path) -> None:
        """The summary table of a failed run (what was measured before it failed) on stderr."""
        from .train.distributed import is_main

        if self.quiet or not is_main():
            return
        print_summary(metrics, record, err=True, failed=True)


def export_status(result: dict) -> str:
    status = result.get("status", "?")
    if status == "skipped":
        reason = str(result.get("reason", "")).removeprefix("skipped: ")
        return f"skipped ({reason})"
    if status == "failed":
        return f"failed ({result.get('error', '')})"
    return status


def export_figures(result: dict) -> str:
    runtime, pytorch = result.get("sqnr_runtime_db"), result.get("sqnr_pytorch_db")
    if runtime is None or pytorch is None:
        return ""
    return f"runtime {runtime:.2f} dB vs PyTorch {pytorch:.2f} dB"


def _drop(fp32: Any, int8: Any) -> str:
    if not isinstance(fp32, (int, float)) or not isinstance(int8, (int, float)):
        return "-"
    return fmt_number(fp32 - int8, sign=True)


def fmt_number(value: Any, sign: bool = False) -> str:
    """Metrics as people read them: two decimals from 1 up (``72.00``, ``+0.03`` drops), 4 digits below."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    plus = "+" if sign else ""
    if isinstance(value, int):
        return f"{value:{plus}d}"
    if abs(value) >= 1 or sign:
        return f"{value:{plus}.2f}"
    return f"{value:.4g}"


def summary_tables(metrics: dict) -> list[Any]:
    """The metric table (FP32 / INT8 [/ QAT] / drop) and the export table, as rich Tables.

    The quantized column is named by ``metrics["precision"]`` (``FP8 E4M3``, ``INT8+FP8 E4M3``).
    """
    from rich.table import Table
    from rich.text import Text

    from .quant.precision import of_metrics

    tables = []
    # with data.test: the reported (test) figures, then the validation ones that tune/keep_best chose on
    splits = [("data.test (reported)", metrics["test"]), ("data.validation (selection)", metrics["validation"])] \
        if metrics.get("test") and metrics.get("validation") else \
        [("on the calibration batches (data.validation is not set)" if metrics.get("reported_split") == "calibration"
          else None, metrics)]
    for title, phases in splits:
        fp32, int8, qat = phases.get("fp32") or {}, phases.get("int8") or {}, phases.get("qat") or {}
        if not (fp32 or int8):
            continue
        columns = ["metric", "FP32", of_metrics(metrics), "drop", *(["QAT", "QAT drop"] if qat else [])]
        table = Table(*columns, box=None, pad_edge=False, title=title, title_justify="left")
        for key in list(dict.fromkeys([*fp32, *int8])):
            row = [key, fmt_number(fp32.get(key, "-")), fmt_number(int8.get(key, "-")), _drop(fp32.get(key), int8.get(key))]
            if qat:
                row += [fmt_number(qat.get(key, "-")), _drop(fp32.get(key), qat.get(key))]
            table.add_row(*map(Text, row))
        tables.append(table)
    exports = metrics.get("exports") or []
    if exports:
        table = Table("export", "format", "status", "figures", box=None, pad_edge=False)
        for result in exports:
            cells = (result["path"], result["format"], export_status(result), export_figures(result))
            table.add_row(*map(Text, cells))
        tables.append(table)
    return tables


def print_summary(metrics: dict, run_dir: Path, err: bool = False, failed: bool = False) -> None:
    """The summary tables, the run directory and its reports (stdout; ``err``: stderr)."""
    from rich.console import Console

    console = Console(width=200, highlight=False, soft_wrap=True, stderr=err)
    for table in summary_tables(metrics):
        console.print(table)
        console.print()
    if failed:
        failure = metrics.get("failure") or {}
        click.echo(f"FAILED during {STAGE_LABELS.get(failure.get('stage'), failure.get('stage'))}", err=err)
    click.echo(f"{'failed run record' if failed else 'run directory'}: {run_dir}", err=err)
    reports = [name for name in ("report.md", "report.html") if (run_dir / name).is_file()]
    if reports:
        click.echo(f"report: {run_dir / reports[0]}" + (f" ({', '.join(reports[1:])} beside it)" if reports[1:]
                                                         else ""), err=err)
