"""Turn pydantic validation errors into located diagnostics with "did you mean" hints."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from ..export import formats
from ..ptq.registry import STEPS
from .errors import Diagnostic, Position, dotted, nearest_position
from .schema import Recipe

_TYPE_ERRORS = ("_type", "literal_error", "union_tag_invalid", "is_instance_of")


def _data_path(loc: tuple, data: Any) -> tuple:
    """``loc`` without pydantic's union/tag segments: the path of the value (or missing key) in ``data``."""
    path: list = []
    node = data
    for part in loc:
        child = _child(node, part)
        if child is not _ABSENT:
            node = child
        elif _looks_like_tag(part) or not isinstance(node, dict):
            continue  # a union branch tag, or a position inside a scalar/short list
        path.append(part)  # present, or the missing/unknown key the error is about
    return tuple(path)


_ABSENT = object()


def _child(node: Any, part: Any) -> Any:
    """``node[part]`` for a key of a dict or an index inside a list, else ``_ABSENT``."""
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return _ABSENT


def _looks_like_tag(part: Any) -> bool:
    if not isinstance(part, str):
        return False
    return ("[" in part or part in {"str", "int", "float", "bool", "list", "dict"} or part[:1].isupper()
            or part in formats.FORMATS or part in STEPS or part.startswith("function-"))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _containers_in(annotation: Any) -> list[Any]:
    """Element annotations of list/dict annotations inside ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _containers_in(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [c for arg in typing.get_args(annotation) for c in _containers_in(arg)]
    if origin is list:
        return [typing.get_args(annotation)[0]]
    if origin is dict:
        return [typing.get_args(annotation)[1]]
    return []


def allowed_keys(path: tuple) -> list[str]:
    """Field names (and aliases) accepted at the mapping ``path`` of a recipe."""
    hints = typing.get_type_hints
    candidates: list[Any] = [Recipe]
    for part in path:
        following: list[Any] = []
        for candidate in candidates:
            fields = []
            for model in (_models_in(candidate) if isinstance(part, str) else []):  # a model, or Model | None
                annotations = hints(model, include_extras=True)
                for name, info in model.model_fields.items():
                    if part in (name, info.alias):
                        fields.append(annotations.get(name, info.annotation))  # assembled fields: no hint
            following += fields or _containers_in(candidate)
        candidates = following
        if not candidates:
            return []
    keys: list[str] = []
    for candidate in candidates:
        for model in _models_in(candidate):
            for name, info in model.model_fields.items():
                keys.append(info.alias or name)
    return sorted(set(keys))


def _value_at(data: Any, path: tuple) -> str:
    """The YAML-ish text of the value at ``path`` in ``data`` (for a hint), ``...`` when not found."""
    node = data
    for part in path:
        node = _child(node, part)
        if node is _ABSENT:
            return "..."
    if isinstance(node, bool):
        return str(node).lower()
    return str(node) if isinstance(node, (int, float, str)) else "..."


def _suggest(word: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def diagnostics_from_validation(exc: ValidationError, data: Any, positions: dict,
                                default: Position) -> list[Diagnostic]:
    """One diagnostic per distinct problem, located at the key that caused it."""
    entries = []
    for error in exc.errors():
        path = _data_path(tuple(error["loc"]), data)
        entries.append((path, error))
    # In a union (e.g. `str | Selector`), drop the branches whose type the value plainly is not.
    deep = {p for p, e in entries if not e["type"].endswith(_TYPE_ERRORS)}
    kept = []
    for path, error in entries:
        is_type_error = error["type"].endswith(_TYPE_ERRORS)
        shadowed = any(d[: len(path)] == path for d in deep)
        if is_type_error and shadowed:
            continue
        kept.append((path, error))
    merged: dict[tuple, list[dict]] = {}
    for path, error in kept:
        merged.setdefault(path, []).append(error)
    diagnostics = []
    for path, errors in merged.items():
        first = errors[0]
        kind = first["type"]
        hint = None
        if kind == "extra_forbidden":
            key = path[-1] if path else "?"
            options = allowed_keys(path[:-1])
            message = f"unknown key {key!r}"
            hint = _suggest(str(key), options) or (f"allowed keys: {', '.join(options)}" if options else None)
            if hint and "kwargs" in options and not hint.startswith("did you mean"):
                value = _value_at(data, path)
                hint = (f"keyword arguments go under `kwargs:` (e.g. kwargs: {{{key}: {value}}}); "
                        + hint)
        elif kind == "missing":
            message = f"missing required key {path[-1]!r}" if path else "missing required key"
            position_path = path[:-1]
            diagnostics.append(Diagnostic(nearest_position(positions, position_path, default),
                                          f"{dotted(position_path)}: {message}"))
            continue
        else:
            messages = list(dict.fromkeys(_clean(e["msg"]) for e in errors))
            message = " or ".join(messages) if len(messages) > 1 else messages[0]
            value = first.get("input")
            if kind == "literal_error" and isinstance(value, str):
                expected = re.findall(r"'([^']*)'", str(first.get("ctx", {}).get("expected", "")))
                hint = _suggest(value, expected)
            if kind == "union_tag_invalid" and path[:1] == ("export",) and len(path) == 2:
                message = formats.FORMATS.unknown(first.get("ctx", {}).get("tag"))  # names the registered ones
                hint = f"register a format with {formats.FORMATS.how_to_register}"
            if kind == "union_tag_invalid" and path[:1] == ("ptq",) and len(path) == 2:
                message = STEPS.unknown(first.get("ctx", {}).get("tag"))
                hint = f"register a step with {STEPS.how_to_register}"
            if kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
                hint = f"quote the value: '{value}'" + (" (versions are MAJOR.MINOR.PATCH, e.g. '1.0.0')"
                                                        if path == ("version",) else "")
            if not isinstance(value, (dict, list)) and kind != "extra_forbidden":
                message += f" (got {value!r})" if repr(value) not in message else ""
            hint = hint or _hint_for(path)
        diagnostics.append(Diagnostic(nearest_position(positions, path, default), f"{dotted(path)}: {message}", hint))
    return diagnostics


def _hint_for(path: tuple) -> str | None:
    """Fix hints for a few keys whose errors come from validators (not from the type of the value)."""
    if len(path) == 3 and path[0] == "export" and path[2] in ("path", "source"):
        return "write a file name relative to the run directory, e.g. 'model.onnx' or 'onnx/model.onnx'"
    if path[:1] == ("share",) and (len(path) == 2 or path[2:] == ("quantizers",)):
        return "a share group needs two or more quantizers: list them, or use one group per for_each match"
    return None


def _clean(message: str) -> str:
    return re.sub(r"^(Value error|Assertion failed), ", "", message)
