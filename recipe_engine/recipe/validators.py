"""Field validators of the recipe schema (kept out of schema.py, which holds the models)."""

from __future__ import annotations

import re
import warnings

from .paths import safe_relative_path

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
CALLABLE_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
TYPE_PATH = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")


def check_callable(value: str | None) -> str | None:
    if value is not None and not CALLABLE_PATH.fullmatch(value):
        suggestion = _callable_suggestion(value)
        raise ValueError(f"expected 'package.module:callable', got {value!r}"
                         + (f"; did you mean {suggestion!r}? (a module's import path, not a file path)"
                            if suggestion else ""))
    return value


def _callable_suggestion(value: str) -> str | None:
    """``mydet/model.py:build`` -> ``mydet.model:build``; ``mydet.model.build`` -> ``mydet.model:build``."""
    module, colon, attr = value.strip().partition(":")
    module = module.removeprefix("./").removesuffix(".py").replace("/", ".").replace("\\", ".").strip(".")
    if not colon and module.count(".") >= 2:
        module, _, attr = module.rpartition(".")
    candidate = f"{module}:{attr}"
    return candidate if candidate != value and CALLABLE_PATH.fullmatch(candidate) else None


def check_types(value: str | list[str] | None) -> str | list[str] | None:
    for name in [value] if isinstance(value, str) else (value or []):
        if not TYPE_PATH.fullmatch(name):
            raise ValueError(f"type {name!r} is not a class name: write a torch.nn class (Conv2d), an spconv "
                             "class (SubMConv3d) or 'package.module:Class'")
    return value


def check_patterns(value: str | list[str] | None) -> str | list[str] | None:
    for pattern in [value] if isinstance(value, str) else (value or []):
        if not pattern:
            raise ValueError("empty name pattern")
        if pattern.startswith("re:"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    re.compile(pattern[3:])
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    return value


def check_artifact(value: str) -> str:
    return str(safe_relative_path(value))
