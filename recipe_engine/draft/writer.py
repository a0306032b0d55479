"""Write a draft recipe as commented YAML.

Values are emitted by PyYAML in flow style (so quoting is always right) and laid out by hand:
one list entry per line (mappings one key per line), each preceded by ``#`` comments saying why
it is there. Entries that failed a check are written as comments with the reason. The result
is read back with the engine's loader before it is kept (``recipe_engine.draft.build``).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import yaml

from .entries import Entry

WIDTH = 100


def flow(value: Any) -> str:
    """``value`` as one line of flow-style YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False, allow_unicode=True).strip()
    if text.endswith("\n..."):
        text = text[:-4].rstrip()
    elif text.endswith("..."):
        text = text[:-3].rstrip()
    return text


def _comment(lines: list[str], indent: str) -> list[str]:
    out = []
    for line in lines:
        for piece in textwrap.wrap(line, WIDTH - len(indent) - 2) or [""]:
            out.append(f"{indent}# {piece}".rstrip())
    return out


def _item(value: Any, indent: str) -> list[str]:
    """A list item: a mapping one key per line, anything else on one line."""
    if isinstance(value, dict) and value:
        keys = list(value)
        lines = [f"{indent}- {keys[0]}: {flow(value[keys[0]])}"]
        lines += [f"{indent}  {k}: {flow(value[k])}" for k in keys[1:]]
        return lines
    return [f"{indent}- {flow(value)}"]


@dataclass
class Section:
    """A top-level key: either a list of entries or a fixed value."""

    key: str
    entries: list[Entry] = field(default_factory=list)
    value: Any = None
    why: list[str] = field(default_factory=list)


def render(header: list[str], top: dict[str, Any], sections: list[Section]) -> str:
    """The recipe text: ``header`` comments, ``top`` keys (name, model, data, ...), then the sections."""
    lines = _comment(header, "") + [""]
    for key, value in top.items():
        if isinstance(value, dict) and value and key in ("model", "data"):
            lines += ([""] if key == "model" else []) + [f"{key}:"]
            lines += [f"  {k}: {flow(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {flow(value)}")
    for section in sections:
        lines.append("")
        lines += _comment(section.why, "")
        if section.value is not None:
            lines.append(f"{section.key}: {flow(section.value)}")
            continue
        live = [e for e in section.entries if e.commented is None]
        lines.append(f"{section.key}:" if live else f"{section.key}: []")
        for entry in section.entries:
            if entry.commented is not None:
                lines += _comment(entry.why + [entry.commented], "  ")
                lines += ["  # " + line for line in _item(entry.value, "")]
                continue
            lines += _comment(entry.why, "  ")
            lines += _item(entry.value, "  ")
    return "\n".join(lines) + "\n"


__all__ = ["Section", "flow", "render"]
