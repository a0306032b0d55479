"""recipe-engine: quantize PyTorch models to INT8 from declarative YAML recipes.

The public API is imported lazily so that ``import recipe_engine`` (and the CLI's
``validate``/``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_recipe": "recipe_engine.recipe.loader",
    "RecipeError": "recipe_engine.recipe.errors",
    "Recipe": "recipe_engine.recipe.schema",
    "apply": "recipe_engine.pipeline",
    "calibrate": "recipe_engine.pipeline",
    "prepare": "recipe_engine.pipeline",
    "save_quantized": "recipe_engine.pipeline",
    "load_quantized": "recipe_engine.pipeline",
    "run_recipe": "recipe_engine.pipeline",
    "export": "recipe_engine.export.runner",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'recipe_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
