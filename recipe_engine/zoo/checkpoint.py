"""Committed zoo checkpoints: ``{"state_dict": ..., "meta": {...}}`` loadable with weights_only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


def checkpoint_path(name: str) -> Path:
    """Path of the committed checkpoint of zoo model ``name``."""
    return CHECKPOINT_DIR / f"{name}.pt"


def save_checkpoint(path: str | os.PathLike, model: nn.Module | dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> Path:
    """Atomically write a state_dict (or ``model.state_dict()``) and ``meta`` to ``path``.

    ``meta`` must hold plain Python values; the file is verified to load with
    ``weights_only=True`` before it replaces ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().cpu().clone() for k, v in source.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"state_dict": state, "meta": meta}, tmp)
        torch.load(tmp, map_location="cpu", weights_only=True)  # fail here, not at load time
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(name_or_path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(state_dict, meta)`` by zoo name (e.g. ``"digits"``) or file path, weights_only."""
    p = Path(name_or_path)
    if p.suffix != ".pt":
        p = checkpoint_path(str(name_or_path))
    if not p.exists():
        raise FileNotFoundError(f"{p} not found; train it with `python -m recipe_engine.zoo.train {p.stem}`")
    blob = torch.load(p, map_location="cpu", weights_only=True)
    return blob["state_dict"], blob["meta"]


def load_into(model: nn.Module, name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint into ``model`` with ``strict=True``; returns its metadata."""
    state, meta = load_checkpoint(name_or_path)
    model.load_state_dict(state, strict=True)
    return meta


def pretrained_or_random(model: nn.Module, name: str, pretrained: bool) -> nn.Module:
    """``model`` as built (random init), or with checkpoint ``name`` loaded strictly and in eval mode."""
    if pretrained:
        load_into(model, name)
        model.eval()
    return model
