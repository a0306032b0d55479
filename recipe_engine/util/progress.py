"""Progress bars with ETA for long loops (calibration, evaluation, QAT), via rich."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars only on an interactive terminal, and never when RECIPE_NO_PROGRESS is set."""
    return sys.stderr.isatty() and not os.environ.get("RECIPE_NO_PROGRESS")


def progress(items: Iterable[T], *, total: int | None = None, description: str = "",
             enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` showing a progress bar with elapsed time and ETA on stderr."""
    if not (enabled and progress_enabled()):
        yield from items
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


class ProgressBatches:
    """``batches`` for a user's ``evaluate(model, batches)``, with a bar over the first pass through them.

    The evaluate loop is the user's, so the bar follows its iteration: the first full ``for`` over the
    batches advances the bar (later passes, e.g. one collecting labels, run without one). ``len``,
    indexing and any other attribute go to the wrapped object. Only sized batches get a bar (and
    only where :func:`progress_enabled`); anything else is passed through unwrapped by :func:`with_bar`.
    """

    def __init__(self, batches, description: str):
        self._batches = batches
        self._description = description
        self._passes = 0

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, index):
        return self._batches[index]

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._batches, name)

    def __iter__(self):
        self._passes += 1
        if self._passes > 1:
            return iter(self._batches)
        return progress(self._batches, total=len(self._batches), description=self._description)


def with_bar(batches, description: str, enabled: bool = True):
    """``batches`` wrapped in :class:`ProgressBatches` when a bar can be shown, else ``batches`` itself."""
    if not (enabled and progress_enabled()) or not hasattr(batches, "__len__"):
        return batches
    return ProgressBatches(batches, description)
