"""Import the ``package.module:callable`` references a recipe names (its only executable code)."""

from __future__ import annotations

import importlib
from typing import Any

from ..recipe.errors import RecipeError


def import_callable(reference: str, *, what: str = "factory") -> Any:
    """Import ``package.module:attr.path``; raise RecipeError naming the reference on failure."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise RecipeError(f"{what} {reference!r}: expected 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = None
        if exc.name and exc.name.startswith("spconv"):
            from ..select import SPCONV_INSTALL_HINT

            hint = SPCONV_INSTALL_HINT
        raise RecipeError(f"{what} {reference!r}: cannot import {module_name!r}: {exc}", hint=hint) from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
            raise RecipeError(f"{what} {reference!r}: {module_name} has no attribute {attr!r}",
                              hint="available: " + ", ".join(public))
        target = getattr(target, part)
    if not callable(target):
        raise RecipeError(f"{what} {reference!r} is not callable")
    return target
