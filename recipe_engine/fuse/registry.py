"""Registry of named fusion patterns that users add from Python and reference with ``use:``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

# fn(model, scope_names, options) -> list[Fusion]
FusionFn = Callable[[nn.Module, list[str] | None, dict[str, Any]], list]
_REGISTRY: dict[str, FusionFn] = {}


def register(name: str, fn: FusionFn | None = None):
    """Register ``fn`` under ``name`` (also usable as a decorator: ``@register("my_block")``).

    ``fn(model, scope, options)`` receives the model, the module paths selected by the entry's
    ``within`` (None: whole model) and the entry's ``with:`` options; it folds in place and
    returns a list of :class:`recipe_engine.fuse.Fusion` records.
    """
    def decorate(func: FusionFn) -> FusionFn:
        _REGISTRY[name] = func
        return func

    return decorate(fn) if fn is not None else decorate


def lookup(name: str) -> FusionFn | None:
    return _REGISTRY.get(name)


def registered() -> list[str]:
    return sorted(_REGISTRY)
