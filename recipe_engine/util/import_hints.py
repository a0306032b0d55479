"""Hints for a ``package.module:name`` reference that does not import: the path, a misspelt module or name."""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any


def not_found_hint(missing: str) -> str:
    """Why ``missing`` (the module the reference names, or a package above it) cannot be imported."""
    parent, _, leaf = missing.rpartition(".")
    if parent:
        try:
            package = importlib.import_module(parent)
        except Exception:  # noqa: BLE001 - only a hint: fall through to the path advice
            package = None
        names = [m.name for m in pkgutil.iter_modules(getattr(package, "__path__", []))]
        close = difflib.get_close_matches(leaf, names, n=3)
        if close:
            return "did you mean " + " or ".join(repr(f"{parent}.{c}") for c in close) + "?"
        if names:
            return f"modules of {parent}: " + ", ".join(sorted(names)[:12])
    top = missing.split(".")[0]
    here = [p for p in (Path.cwd() / top, Path.cwd() / f"{top}.py") if p.exists()]
    where = (f"{here[0].name} is in the current directory, which the `recipe` command does not put on the path: "
             "`export PYTHONPATH=$PWD:$PYTHONPATH`" if here else
             f"add the directory that holds {top} to PYTHONPATH (`export PYTHONPATH=/path/to/dir:$PYTHONPATH`) "
             "or pip install your package; the `recipe` command does not add the current directory")
    return f"{top!r} is not on the Python path: {where}"


def attribute_hint(target: Any, name: str) -> str:
    """``did you mean`` among the functions and classes of ``target`` (imported modules left out)."""
    own = getattr(target, "__name__", None)
    names = sorted(n for n in dir(target) if not n.startswith("_") and not inspect.ismodule(getattr(target, n, None)))
    defined = [n for n in names if getattr(getattr(target, n, None), "__module__", None) == own] or names
    close = difflib.get_close_matches(name, names, n=3)
    listed = "defined there: " + ", ".join(defined[:12]) + (" ..." if len(defined) > 12 else "")
    return ("did you mean " + " or ".join(map(repr, close)) + "? " if close else "") + listed
