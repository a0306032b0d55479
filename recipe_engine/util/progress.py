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
