"""The JSON schema of the recipe language, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

from .schema import Recipe

SCHEMA_ID = "https://recipe-engine.dev/schemas/recipe.schema.json"


def schema_dict() -> dict:
    """The JSON schema (draft 2020-12) of a recipe file."""
    schema = Recipe.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    return schema


def schema_text() -> str:
    """The schema file's exact text (stable, so ``recipe schema --check`` can compare it)."""
    return json.dumps(schema_dict(), indent=2, sort_keys=True) + "\n"


def default_schema_path() -> Path | None:
    """``schemas/recipe.schema.json`` of the project checkout containing this package; None for an installed
    package (site-packages has no project folder to write into)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "recipe_engine").is_dir():
        return None
    return root / "schemas" / "recipe.schema.json"
