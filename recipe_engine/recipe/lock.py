"""The recipe lock: the fully resolved recipe in canonical form, and its sha256."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from .schema import Recipe
from .secrets import redact


def canonical_data(spec: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data, defaults filled in (so writing a default changes nothing).

    Values read with ``secret('NAME')`` appear as ``<secret:NAME>`` (see :mod:`.secrets`).
    """
    data = spec.model_dump(mode="json", by_alias=True)
    data.pop("extends", None)
    return redact(data, spec._redactions)


def recipe_sha256(spec: Recipe) -> str:
    """sha256 of the canonical JSON form (sorted keys, no whitespace), secrets redacted (see :mod:`.secrets`)."""
    text = json.dumps(canonical_data(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def lock_text(spec: Recipe, sources: list[str] | None = None) -> str:
    """The text of ``recipe.lock.yaml``: a header with the hash, then the canonical YAML."""
    header = [f"# recipe-engine lock: {spec.recipe} {spec.version}", f"# sha256: {recipe_sha256(spec)}"]
    for source in sources or []:
        header.append(f"# from: {source}")
    body = yaml.safe_dump(canonical_data(spec), sort_keys=True, default_flow_style=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body
