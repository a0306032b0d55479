"""Declarative BatchNorm / activation folding (the recipe's ``fuse:`` section).

- :mod:`.registry`: fusion kinds by name (``use: NAME``; ``pattern`` and ``block`` are built-in kinds,
  their options in :mod:`.settings`); light, the recipe schema reads it;
- :mod:`.apply`: the built-in kinds and :func:`apply_fusions`; :mod:`.fold`: the folding maths.

The names below are imported lazily: the recipe schema imports this package's light modules
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import settings as _builtin_kinds  # noqa: F401  (registers the built-in kinds pattern and block)
from .registry import FUSIONS, kind, lookup, register, registered, unregister

_LAZY = {"Fusion", "apply_fusions", "entry_kind", "fuse_block", "fuse_chains"}

__all__ = ["FUSIONS", "Fusion", "apply_fusions", "entry_kind", "fuse_block", "fuse_chains", "kind", "lookup",
           "register", "registered", "unregister"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(".apply", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
