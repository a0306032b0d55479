"""The trust surface of a recipe: every module it makes the engine import, and from which key.

A recipe imports code in two ways: callables (``model.factory``, ``data.*.factory``,
``data.forward``/``evaluate``/``loss``) are imported *and called*; class names (selector
``type:`` in rules, ``fuse[].within`` and ``share[].for_each``, ``fuse[].pattern`` elements and
``fuse[].block``) are imported so that ``isinstance`` can test modules against them --
importing a module runs its top-level code, so both are code the recipe runs. Short type
names (``Conv2d``, ``SubMConv3d``, ``SparseConv``) resolve inside torch.nn or spconv, which
the engine imports anyway, and are not listed. ``fuse[].use`` names a pattern registered
from Python and ``qat.optimizer.name`` a ``torch.optim`` class: neither imports anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import dotted

if TYPE_CHECKING:
    from .schema import Recipe


@dataclass(frozen=True)
class Import:
    """One import a recipe causes: the recipe key, the dotted target and whether it is called."""

    key: tuple
    target: str
    called: bool

    def format(self) -> str:
        return f"{dotted(self.key)}: {self.target}" + ("" if self.called else " (import only)")


def imports_type(name: str) -> bool:
    """True when a type name makes the engine import a module (it names one: 'pkg.mod:Class', 'pkg.Class')."""
    return ":" in name or "." in name


def _selector_types(selector: Any, key: tuple) -> list[Import]:
    if selector is None or isinstance(selector, str) or selector.type is None:
        return []
    names = [selector.type] if isinstance(selector.type, str) else list(selector.type)
    sub = key + ("type",)
    return [Import(sub if isinstance(selector.type, str) else sub + (i,), n, False)
            for i, n in enumerate(names) if imports_type(n)]


def recipe_imports(spec: Recipe) -> list[Import]:
    """Every import ``spec`` causes, callables first, in recipe order (a target listed once per key)."""
    found: list[Import] = []
    if spec.model:
        found.append(Import(("model", "factory"), spec.model.factory, True))
    if spec.data:
        for section in ("calibration", "validation", "test", "train"):
            ref = getattr(spec.data, section)
            if ref is not None:
                found.append(Import(("data", section, "factory"), ref.factory, True))
        for section in ("forward", "evaluate", "loss"):
            target = getattr(spec.data, section)
            if target:
                found.append(Import(("data", section), target, True))
    for i, rule in enumerate(spec.rules):
        found += _selector_types(rule.select, ("rules", i, "select"))
    for i, entry in enumerate(spec.fuse):
        for j, element in enumerate(entry.pattern or []):
            found += [Import(("fuse", i, "pattern", j), part.strip(), False)
                      for part in element.split("|") if imports_type(part.strip())]
        if entry.block and imports_type(entry.block):
            found.append(Import(("fuse", i, "block"), entry.block, False))
        found += _selector_types(entry.within, ("fuse", i, "within"))
    for i, group in enumerate(spec.share):
        if not isinstance(group, list):
            found += _selector_types(group.for_each, ("share", i, "for_each"))
    return found
