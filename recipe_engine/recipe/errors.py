"""The engine's user-facing error type: diagnostics that point into the user's files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    """Where a value came from: a file (or a ``--set`` override) and a 1-based line/column."""

    file: str
    line: int = 1
    col: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    """One problem in a recipe, with an optional hint on how to fix it."""

    position: Position
    message: str
    hint: str | None = None

    def format(self) -> str:
        text = f"{self.position}: {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class RecipeError(Exception):
    """A problem the user can fix: a bad recipe, a selector that selects nothing, a failed check.

    The CLI prints it without a traceback and exits 1.
    """

    def __init__(self, message: str | None = None, diagnostics: list[Diagnostic] | None = None,
                 hint: str | None = None, key: tuple | None = None):
        self.diagnostics: list[Diagnostic] = list(diagnostics or [])
        self.hint = hint
        # the recipe key it is about, when raised without a position (see LoadedRecipe.located); a subclass
        # may have set its own before calling this
        self.key = key if key is not None else getattr(self, "key", None)
        self.headline = message or (self.diagnostics[0].message if self.diagnostics else "invalid recipe")
        super().__init__(self.format())

    def format(self) -> str:
        if self.diagnostics:
            text = "\n".join(d.format() for d in self.diagnostics)
        else:
            text = self.headline
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


def nearest_position(positions: Mapping[tuple, Position], path: tuple, default: Position) -> Position:
    """The position of ``path`` or of its nearest ancestor that has one."""
    for end in range(len(path), -1, -1):
        found = positions.get(tuple(path[:end]))
        if found is not None:
            return found
    return default


def dotted(path: tuple) -> str:
    """``("rules", 0, "select")`` -> ``rules[0].select``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"
