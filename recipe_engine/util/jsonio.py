"""The one JSON writer of the engine: strict JSON, with non-finite numbers written as ``null``.

``json.dumps`` writes ``NaN``/``Infinity`` by default, which strict parsers (JavaScript's
``JSON.parse``, jq, most non-Python readers) reject. Every JSON file and JSON output of the engine
(``metrics.json``, ``sensitivity.json``, export artifacts, the QAT log, ``recipe run --json``) goes
through :func:`json_text`, which replaces a non-finite float by ``None`` first and then dumps with
``allow_nan=False``. :func:`non_finite` names what was replaced (``int8.x``) so a run can warn.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _finite(value: Any, path: str, found: list[tuple[str, float]]) -> Any:
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        found.append((path, value))
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def finite(value: Any) -> tuple[Any, list[tuple[str, float]]]:
    """``value`` with every non-finite float replaced by ``None``, and the (dotted path, value) replaced."""
    found: list[tuple[str, float]] = []
    return _finite(value, "", found), found


def non_finite(value: Any) -> list[tuple[str, float]]:
    """The (dotted path, value) of every NaN/inf float in ``value`` (``[("int8.x", nan)]``)."""
    return finite(value)[1]


def json_text(value: Any, **options: Any) -> str:
    """``json.dumps(value, **options)`` as strict JSON: NaN and +-inf become ``null``."""
    return json.dumps(finite(value)[0], allow_nan=False, **options)
