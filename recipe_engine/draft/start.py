"""What ``recipe init`` starts from: a recipe's ``model:`` and ``data:`` keys, from a file or from options.

A start file is any recipe-like YAML file (a full recipe works too; only ``model`` and ``data``
are read), loaded with the engine's loader so its errors are located ``FILE:LINE:COL``. Options
(``--model``, ``--data`` ...) build the same two sections; their errors name the option, the
way ``--set`` errors do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..recipe.errors import Diagnostic, Position, RecipeError
from ..recipe.hints import diagnostics_from_validation
from ..recipe.loader import LoadedRecipe, resolve_document
from ..recipe.schema import Recipe

DRAFT_VERSION = "0.1.0"


def _validate(data: dict, positions: dict, default: Position, path: Path, files: list[Path]) -> LoadedRecipe:
    try:
        spec = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(diagnostics=diagnostics_from_validation(exc, data, positions, default)) from None
    return LoadedRecipe(spec=spec, path=path, files=files, positions=positions)


def start_from_file(path: str | Path) -> LoadedRecipe:
    """The ``model``/``data`` of a YAML file (extends, templates and positions as for any recipe)."""
    body, positions, files = resolve_document(path)
    source = files[-1]
    default = Position(str(source))
    missing = [key for key in ("model", "data") if key not in body]
    if missing:
        raise RecipeError(diagnostics=[Diagnostic(default, f"{' and '.join(missing)}: missing; recipe init builds the "
                                                  "model and traces one calibration batch",
                                                  "add model: {factory: pkg.module:build} and data: {calibration: "
                                                  "{factory: pkg.module:batches}, forward: pkg.module:forward}")])
    data = {"recipe": body.get("recipe", source.stem), "version": body.get("version", DRAFT_VERSION),
            "model": body["model"], "data": body["data"]}
    if "vars" in body:
        data["vars"] = body["vars"]
    return _validate(data, positions, default, source, files)


def _json(option: str, text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{option}: not JSON: {exc.msg} at column {exc.colno}",
                          hint=f"""quote it for the shell: {option} '{{"pretrained": true}}'""") from None
    if not isinstance(value, dict):
        raise RecipeError(f"{option}: expected a JSON object of keyword arguments, got {type(value).__name__}",
                          hint=f"""{option} '{{"count": 16}}'""")
    return value


def start_from_options(model: str, data: str, *, model_kwargs: str | None = None, data_kwargs: str | None = None,
                       validation: str | None = None, forward: str | None = None,
                       evaluate: str | None = None, name: str | None = None) -> LoadedRecipe:
    """The same sections from ``recipe init`` options; errors are located at the option."""
    def at(option: str) -> Position:
        return Position(option, 1, 1)

    section: dict[str, Any] = {"calibration": {"factory": data, "kwargs": _json("--data-kwargs", data_kwargs)}}
    positions = {("model",): at("--model"), ("model", "factory"): at("--model"),
                 ("model", "kwargs"): at("--model-kwargs"), ("data",): at("--data"),
                 ("data", "calibration"): at("--data"), ("data", "calibration", "factory"): at("--data"),
                 ("data", "calibration", "kwargs"): at("--data-kwargs")}
    if validation:
        section["validation"] = {"factory": validation, "kwargs": {}}
        positions[("data", "validation")] = positions[("data", "validation", "factory")] = at("--validation")
    if forward:
        section["forward"] = forward
        positions[("data", "forward")] = at("--forward")
    if evaluate:
        section["evaluate"] = evaluate
        positions[("data", "evaluate")] = at("--evaluate")
    body = {"recipe": name or "draft", "version": DRAFT_VERSION,
            "model": {"factory": model, "kwargs": _json("--model-kwargs", model_kwargs)}, "data": section}
    return _validate(body, positions, at("recipe init"), Path("recipe-init"), [])


__all__ = ["DRAFT_VERSION", "start_from_file", "start_from_options"]
