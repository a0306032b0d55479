"""Shared helpers of ``benchmarks/accuracy.py``: progress lines, quiet libraries, one measurement, markdown.

A :class:`Measure` is one (row, seed) result: the metric on the held-out test split and on the
validation split, and the wall seconds the method spent quantizing (calibration + PTQ, never evaluation).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
_START = time.perf_counter()


def log(message: str) -> None:
    """A progress line on stderr with the elapsed time."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def elapsed() -> float:
    """Seconds since this module was imported (the run's start)."""
    return time.perf_counter() - _START


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Python warnings and chatty loggers of the libraries (exporter, quantizers, onnxruntime)."""
    logging.getLogger("pytorch_quantization").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def first(batches: Iterable[Any], count: int | None) -> list[Any]:
    """The first ``count`` batches (all when None), as the calibration loop takes them."""
    return list(itertools.islice(batches, count)) if count else list(batches)


@dataclass
class Measure:
    """One row for one calibration seed: test and validation metric, quantization seconds, a note."""

    test: float | None
    val: float | None
    seconds: float | None
    note: str = ""


@dataclass
class Row:
    """One method of one model: what produces it, and one :class:`Measure` per seed (or why none)."""

    model: str
    label: str
    how: str  # the recipe and overrides, or the peer's configuration
    measures: dict[int, Measure] = field(default_factory=dict)
    status: str = ""  # "not present: ...", "failed: ...", "skipped: ..." when no figure was measured

    def values(self, split: str) -> list[float]:
        return [getattr(m, split) for m in self.measures.values() if getattr(m, split) is not None]


def mean_spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None for none)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(value: float | None, digits: int = 2) -> str:
    """A metric, or a dash when it was not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A markdown table; columns whose index is in ``right`` are right-aligned."""
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Timer:
    """Accumulating wall clock: ``with timer: ...`` adds the block's seconds to ``timer.seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._tick = 0.0

    def __enter__(self) -> Timer:
        self._tick = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._tick
