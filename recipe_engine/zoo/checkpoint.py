"""Committed zoo checkpoints: ``{"state_dict": ..., "meta": {...}}`` loadable with weights_only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..recipe.errors import RecipeError
from ..util.atomic import atomic_path

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
    source = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().cpu().clone() for k, v in source.items()}
    with atomic_path(path) as tmp:  # the user's umask applies
        torch.save({"state_dict": state, "meta": meta}, tmp)
        torch.load(tmp, map_location="cpu", weights_only=True)  # fail here, not at load time
    return path


def load_checkpoint(name_or_path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(state_dict, meta)`` by zoo name (e.g. ``"digits"``) or file path, weights_only."""
    p = Path(name_or_path)
    if p.suffix != ".pt":
        p = checkpoint_path(str(name_or_path))
    if not p.exists():
        raise RecipeError(f"zoo checkpoint {p} not found",
                          hint=f"train it with `python -m recipe_engine.zoo.train {p.stem}`, or pass pretrained: false")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors are the file's fault
        raise RecipeError(f"zoo checkpoint {p}: cannot load it with weights_only=True: {exc}") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise RecipeError(f"zoo checkpoint {p} is not a zoo checkpoint ({{'state_dict': ..., 'meta': ...}})",
                          hint=f"retrain it with `python -m recipe_engine.zoo.train {p.stem}`")
    return blob["state_dict"], blob.get("meta", {})


def load_into(model: nn.Module, name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint into ``model`` with ``strict=True``; returns its metadata."""
    state, meta = load_checkpoint(name_or_path)
    own = model.state_dict()
    problems = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items()
                if k in own and own[k].shape != v.shape]
    problems += [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    if problems:
        raise RecipeError(f"zoo checkpoint {name_or_path} does not fit {type(model).__name__}: "
                          + ", ".join(problems[:4]) + (f", ... (+{len(problems) - 4})" if len(problems) > 4 else ""),
                          hint="the model's kwargs must match those it was trained with (see the checkpoint's meta)")
    model.load_state_dict(state, strict=True)
    return meta


def pretrained_or_random(model: nn.Module, name: str, pretrained: bool) -> nn.Module:
    """``model`` as built (random init), or with checkpoint ``name`` loaded strictly and in eval mode."""
    if pretrained:
        load_into(model, name)
        model.eval()
    return model
