"""One drafted recipe entry and the reasons it is there; class references as recipes write them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class Entry:
    """A value for a recipe list (fuse, rules, share, disable, export) and why it was drafted."""

    value: Any
    why: list[str]
    count: int = 0  # fusions / selections it is expected to make (for --explain and tests)
    commented: str | None = None  # when set, written as a comment only, with this reason
    extra: dict[str, Any] = field(default_factory=dict)


def class_ref(cls: type) -> str:
    """``package.module:Class`` (what selectors and fusions name); short names for torch.nn/spconv classes."""
    module = cls.__module__
    if module.startswith("torch.nn") and getattr(nn, cls.__name__, None) is cls:
        return cls.__name__
    if module.startswith("spconv."):
        return cls.__name__
    return f"{module}:{cls.__qualname__}"


def importable(cls: type) -> bool:
    """Whether a recipe can name ``cls`` (not defined in ``__main__`` or inside a function)."""
    return cls.__module__ != "__main__" and "<locals>" not in cls.__qualname__


def lca(paths: list[str]) -> str:
    """The deepest module path that is a parent of (or equal to) every path."""
    if not paths:
        return ""
    split = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if all(part == parts[0] for part in parts):
            common.append(parts[0])
        else:
            break
    return ".".join(common)


def owner_of(quantizer: str) -> str:
    """``a.b.input`` -> ``a.b``; ``a.add0`` -> ``a``."""
    return quantizer.rpartition(".")[0]
