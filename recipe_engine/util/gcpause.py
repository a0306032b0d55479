"""Pause Python's cyclic garbage collector while the engine builds many objects and frees none."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def no_gc_passes(func: F) -> F:
    """Run ``func`` with the cyclic collector paused (re-enabled after, if it was on).

    Recipe application creates about a dozen objects per module (quantizers, their buffers, fused
    weights) and frees almost none, so the collector's generation thresholds set off full passes over
    the whole Python heap that find nothing: about a quarter of the time at 10k modules. Reference
    counting still frees everything as usual; cycles made meanwhile wait for the next pass after.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return func(*args, **kwargs)
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper  # type: ignore[return-value]
