"""Differences between two resolved recipes, as dotted-path lines."""

from __future__ import annotations

import json
from typing import Any

from .errors import dotted
from .lock import canonical_data
from .schema import Recipe


def _flatten(data: Any, path: tuple = ()) -> dict[tuple, Any]:
    if isinstance(data, dict) and data:
        out: dict[tuple, Any] = {}
        for key in sorted(data):
            out.update(_flatten(data[key], path + (key,)))
        return out
    if isinstance(data, list) and data:
        out = {}
        for index, item in enumerate(data):
            out.update(_flatten(item, path + (index,)))
        return out
    return {path: data}


def diff_recipes(a: Recipe, b: Recipe) -> list[str]:
    """``- path: old`` / ``+ path: new`` / ``~ path: old -> new`` lines; empty when identical."""
    flat_a, flat_b = _flatten(canonical_data(a)), _flatten(canonical_data(b))
    lines = []
    for path in sorted(set(flat_a) | set(flat_b), key=lambda p: [str(x) for x in p]):
        show = dotted(path)
        if path not in flat_b:
            lines.append(f"- {show}: {json.dumps(flat_a[path])}")
        elif path not in flat_a:
            lines.append(f"+ {show}: {json.dumps(flat_b[path])}")
        elif flat_a[path] != flat_b[path]:
            lines.append(f"~ {show}: {json.dumps(flat_a[path])} -> {json.dumps(flat_b[path])}")
    return lines
