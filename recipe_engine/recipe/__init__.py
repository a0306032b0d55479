"""The recipe language: schema, loader (YAML + extends + templates + --set), lock.

The names below are imported lazily, so that importing one light module of the language (e.g.
:mod:`.sections`, which export formats' settings build on) does not import the loader and the
whole schema first.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Diagnostic": ".errors", "Position": ".errors", "RecipeError": ".errors",
    "LoadedRecipe": ".loader", "catalogue_dirs": ".loader", "find_recipe": ".loader", "load_recipe": ".loader",
    "load_recipe_data": ".loader",
    "canonical_data": ".lock", "lock_text": ".lock", "recipe_sha256": ".lock",
    "Recipe": ".schema",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
