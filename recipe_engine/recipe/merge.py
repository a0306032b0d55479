"""Deep merge of recipe documents (``extends``) and ``--set`` overrides, keeping positions.

Merge rules (documented in the README):
- mappings merge key by key, recursively;
- lists and scalars in the child replace the parent's value;
- ``KEY+: [...]`` appends the child's list to the parent's list (e.g. ``rules+:``);
- ``KEY: null`` in the child removes the parent's value (the schema default applies).
"""

from __future__ import annotations

from typing import Any

from .errors import Diagnostic, Position, RecipeError
from .yaml_source import parse_yaml

Positions = dict[tuple, Position]


def _drop_under(positions: Positions, prefix: tuple) -> None:
    for key in [k for k in positions if k[: len(prefix)] == prefix and len(k) > len(prefix)]:
        del positions[key]


def _shift(positions: Positions, prefix: tuple, offset: int) -> Positions:
    """Renumber list item positions under ``prefix`` by ``offset`` (for appended lists)."""
    out: Positions = {}
    for key, pos in positions.items():
        if key[: len(prefix)] == prefix and len(key) > len(prefix) and isinstance(key[len(prefix)], int):
            key = prefix + (key[len(prefix)] + offset,) + key[len(prefix) + 1:]
        out[key] = pos
    return out


def deep_merge(base: Any, base_pos: Positions, over: Any, over_pos: Positions,
               prefix: tuple = ()) -> tuple[Any, Positions]:
    """Merge ``over`` onto ``base`` following the module's rules; return data and positions."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        positions = dict(base_pos)
        _drop_under(positions, prefix)
        positions.update({k: v for k, v in over_pos.items() if k[: len(prefix)] == prefix})
        return over, positions
    merged = dict(base)
    positions = dict(base_pos)
    for raw_key, value in over.items():
        append = isinstance(raw_key, str) and raw_key.endswith("+")
        key = raw_key[:-1] if append else raw_key
        child_positions = {prefix + (key,) + k[len(prefix) + 1:]: v for k, v in over_pos.items()
                           if k[: len(prefix) + 1] == prefix + (raw_key,)}
        if append:
            old = merged.get(key) or []
            if not isinstance(old, list) or not isinstance(value, list):
                where = over_pos.get(prefix + (raw_key,), Position("<recipe>"))
                raise RecipeError(diagnostics=[Diagnostic(where, f"'{raw_key}' appends a list to a list",
                                                          f"write '{key}:' to replace the value instead")])
            merged[key] = old + value
            positions.update(_shift(child_positions, prefix + (key,), len(old)))
        elif value is None:
            merged.pop(key, None)
            _drop_under(positions, prefix + (key,))
            positions.pop(prefix + (key,), None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key], positions = deep_merge(merged[key], positions, value, child_positions, prefix + (key,))
            if prefix + (key,) in child_positions:
                positions[prefix + (key,)] = child_positions[prefix + (key,)]
        else:
            merged[key] = value
            _drop_under(positions, prefix + (key,))
            positions.update(child_positions)
    return merged, positions


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """Parse ``a.b.c=VALUE`` (VALUE as YAML) into a path and a value."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE", hint="e.g. --set calibration.batches=8")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {text!r}: empty key segment", hint="keys are dotted paths like calibration.batches")
    try:  # the same bounded, JSON-like-only parser as recipe files
        value = parse_yaml(raw, f"--set {key}")[0] if raw.strip() else ""
    except RecipeError as exc:
        detail = f"{exc.diagnostics[0].position}: {exc.diagnostics[0].message}" if exc.diagnostics else exc.headline
        raise RecipeError(f"--set {text!r}: value is not valid YAML: {detail}",
                          hint="quote the whole argument in your shell, e.g. --set 'disable=[a, b]'") from None
    path: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    return path, value


def raw_value(text: str) -> str:
    """The VALUE part of ``KEY=VALUE``, stripped."""
    return text.split("=", 1)[1].strip() if "=" in text else ""


def apply_override(data: dict, positions: Positions, text: str) -> None:
    """Apply one ``--set KEY=VALUE`` to ``data`` in place, recording its origin for error messages."""
    path, value = parse_override(text)
    origin = Position(f"--set {text.split('=', 1)[0]}", 1, 1)
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        if isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                raise RecipeError(f"--set {text!r}: index {part} is out of range (list has {len(node)} items)")
            node = node[part]
            continue
        if not isinstance(node, dict):
            where = ".".join(map(str, path[:depth]))
            hint = (f"'{where}' is a list: name its items by index, e.g. --set {where}.0.{'.'.join(map(str, path[depth + 1:])) or 'KEY'}=..."
                    if isinstance(node, list) else None)
            raise RecipeError(f"--set {text!r}: '{where}' is not a mapping", hint=hint)
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(last, str) and last.endswith("+"):  # KEY+=[...] appends, as `KEY+:` does in a file
        last = last[:-1]
        path[-1] = last
        current = node.get(last) if isinstance(node, dict) else None
        if current is None:
            current = []
        if not isinstance(current, list) or not isinstance(value, list):
            hint = (f"write the items as a list: --set '{'.'.join(map(str, path))}+=[{raw_value(text)}]'"
                    if isinstance(current, list) else f"'{'.'.join(map(str, path))}' is not a list: use = to replace it")
            raise RecipeError(f"--set {text!r}: '+=' appends a list to a list", hint=hint)
        value = current + value
    if isinstance(node, list) and isinstance(last, int):
        if last >= len(node):
            raise RecipeError(f"--set {text!r}: index {last} is out of range (list has {len(node)} items)")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"--set {text!r}: cannot set a key inside a {type(node).__name__}")
    full = tuple(path)
    _drop_under(positions, full)
    for end in range(1, len(full) + 1):
        positions.setdefault(full[:end], origin)
    positions[full] = origin
