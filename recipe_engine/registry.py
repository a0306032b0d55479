"""Registries keyed by name: the one mechanism behind every kind the engine can be extended with.

Export formats (:mod:`recipe_engine.export.formats`), amax methods (:mod:`recipe_engine.calib.methods`),
fusion kinds (:mod:`recipe_engine.fuse.registry`), quantizable module kinds
(:mod:`recipe_engine.quant.kinds`) and backends (:mod:`recipe_engine.backends`) are each one
:class:`Registry`. Built-ins register through the same calls an extension uses. An entry may
name its implementation as ``"package.module:attr"`` (:func:`resolve` imports it on first use), so
registering a kind never imports torch or a library: the recipe schema, built from the registries
(:mod:`recipe_engine.recipe.schema`), stays light.

Registering a name again replaces the earlier entry; every change calls the registry's listeners
(the recipe schema rebuilds itself from the registries it reads).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(LookupError):
    """A name that is not registered; the message lists the registered names."""


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order."""

    def __init__(self, kind: str, how_to_register: str) -> None:
        self.kind = kind  # e.g. "export format", used in messages
        self.how_to_register = how_to_register  # e.g. "recipe_engine.export.formats.register(name, ...)"
        self._entries: dict[str, T] = {}
        self._listeners: list[Callable[[], None]] = []

    def add(self, name: str, entry: T) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        self._entries[name] = entry
        self._changed()
        return entry

    def remove(self, name: str) -> T | None:
        """Unregister ``name`` (e.g. at the end of a test); returns its entry, None if there was none."""
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._changed()
        return entry

    def lookup(self, name: str) -> T | None:
        return self._entries.get(name)

    def get(self, name: str) -> T:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownNameError(self.unknown(name))
        return entry

    def names(self) -> list[str]:
        """Registered names in registration order (built-ins first)."""
        return list(self._entries)

    def entries(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def unknown(self, name: Any) -> str:
        """``unknown export format 'onx'; did you mean 'onnx-qdq'? (registered: ...)``."""
        close = difflib.get_close_matches(str(name), self.names(), n=1) if isinstance(name, str) else []
        return (f"unknown {self.kind} {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (registered: {', '.join(self.names()) or 'none'})")

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every registration or removal."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()


def resolve(ref: Any) -> Any:
    """``"package.module:attr"`` imported (the attribute, dotted paths allowed); anything else as it is."""
    if not isinstance(ref, str):
        return ref
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:attr', got {ref!r}")
    value: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        value = getattr(value, part)
    return value
