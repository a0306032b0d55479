"""Artifact bookkeeping: recipe metadata on every file, atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import onnx

from .. import __version__
from ..recipe.loader import LoadedRecipe
from ..util.atomic import atomic_write_bytes, atomic_write_text
from ..util.jsonio import json_text


def recipe_metadata(loaded: LoadedRecipe, **extra: Any) -> dict[str, str]:
    """Recipe name, version and lock sha256 (plus ``extra``) as strings, for ONNX metadata_props."""
    spec = loaded.spec
    meta = {"recipe": spec.recipe, "version": spec.version, "sha256": loaded.sha256,
            "producer": f"recipe-engine {__version__}"}
    meta.update({k: str(v) for k, v in extra.items() if v is not None})
    return meta


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace ``model.metadata_props`` with ``metadata`` (sorted keys: byte-stable files)."""
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, metadata[key]


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``model`` atomically (temp file + rename); returns {bytes, sha256} of the file."""
    data = model.SerializeToString(deterministic=True)
    atomic_write_bytes(path, data)
    return {"bytes": len(data), "file_sha256": hashlib.sha256(data).hexdigest()}


def save_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json_text(payload, indent=2, sort_keys=True) + "\n")


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
