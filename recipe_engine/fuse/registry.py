"""Fusion kinds by name: what a ``fuse:`` entry folds, and the options (``with:``) each kind takes.

A kind is a function ``fn(model, scope, options) -> list[Fusion]`` (``scope``: the module paths the
entry's ``within`` selects, None for the whole model; ``options``: the entry's ``with:``, validated
by the kind's options model when it has one, else the plain mapping) and, optionally, that options
model (a :class:`~.settings.FusionOptions`): a misspelled option is then a located error when the
recipe is loaded. An entry names a kind with ``use: NAME``; ``pattern:`` and ``block:`` are the
built-in kinds ``pattern`` and ``block`` (:mod:`.settings`), registered exactly as an extension's::

    from recipe_engine import fuse

    @fuse.register("my_block", options=MyOptions)
    def fold_my_block(model, scope, options):
        ...  # fold in place
        return [fuse.Fusion(0, "my_block", ["layer.conv", "layer.bn"])]

A function that also takes ``entry`` and ``index`` keywords gets the fuse entry and its position.
``fn`` may be ``"package.module:function"`` (imported on first use): this registry stays light, so
the recipe schema can check options without importing torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import Registry, resolve

FusionFn = Callable[..., list]  # fn(model, scope, options[, entry=, index=]) -> list[Fusion]


@dataclass(frozen=True)
class FusionKind:
    name: str
    fn: Any  # FusionFn or "module:function"
    options: type | None = None  # a FusionOptions subclass validating `with:`

    def function(self) -> FusionFn:
        return resolve(self.fn)

    def call(self, model: Any, scope: list[str] | None, options: Any, entry: Any, index: int) -> list:
        fn = self.function()
        parameters = inspect.signature(fn).parameters
        extra = {k: v for k, v in (("entry", entry), ("index", index)) if k in parameters}
        return list(fn(model, scope, options, **extra))


FUSIONS: Registry[FusionKind] = Registry("fusion kind", "recipe_engine.fuse.register(name, fn)")


def register(name: str, fn: FusionFn | str | None = None, *, options: type | None = None):
    """Register fusion kind ``name`` (also a decorator: ``@register("my_block")``); replaces an earlier one."""
    def decorate(func: FusionFn | str) -> FusionFn | str:
        FUSIONS.add(name, FusionKind(name, func, options))
        return func

    return decorate(fn) if fn is not None else decorate


def unregister(name: str) -> None:
    FUSIONS.remove(name)


def kind(name: str) -> FusionKind | None:
    return FUSIONS.lookup(name)


def lookup(name: str) -> FusionFn | None:
    found = FUSIONS.lookup(name)
    return found.function() if found is not None else None


def registered() -> list[str]:
    return FUSIONS.names()
