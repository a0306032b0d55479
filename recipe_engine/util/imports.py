"""Import the ``package.module:callable`` references a recipe names (its only executable code)."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

from ..recipe.errors import RecipeError
from .import_hints import attribute_hint, not_found_hint


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
        elif exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            hint = not_found_hint(exc.name)
        raise RecipeError(f"{what} {reference!r}: cannot import {module_name!r}: {exc}", hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - a SyntaxError or any error raised while importing the user's module
        from .usercode import describe

        raise RecipeError(f"{what} {reference!r}: importing {module_name!r} failed: {describe(exc)}",
                          hint="fix the error in that module") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise RecipeError(f"{what} {reference!r}: {module_name} has no attribute {attr!r}",
                              hint=attribute_hint(target, part))
        target = getattr(target, part)
    if not callable(target):
        raise RecipeError(f"{what} {reference!r} is not callable")
    return target


# Packages whose code the engine runs anyway: importing their modules runs nothing a file chose.
TRUSTED_PACKAGES = frozenset({"recipe_engine", "torch", "spconv", "cumm", "pytorch_quantization", "numpy"})


class ImportRefused(ModuleNotFoundError):
    """Raised for an import that a file's recipe would cause while imports are refused."""


class _RefuseNewImports:
    """A ``sys.meta_path`` finder that refuses every module not yet imported (except TRUSTED_PACKAGES)."""

    def __init__(self, what: str):
        self.what = what

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in TRUSTED_PACKAGES:
            return None  # let the normal finders load it
        raise ImportRefused(f"{self.what} names module {name!r}, which is not imported; loading a file never "
                            f"imports what it names (import it yourself first, or pass trust_recipe=True)",
                            name=name)


@contextlib.contextmanager
def imports_refused(what: str) -> Iterator[None]:
    """While the block runs, importing a module that is not in ``sys.modules`` raises ImportRefused.

    ``load_quantized`` re-applies a file's recipe lock under this guard: selector and fusion types
    may resolve classes of modules already imported (the caller's model) but never import new code.
    """
    finder = _RefuseNewImports(what)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
