"""Resumable QAT checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds everything that decides the rest of a run: model (weights, amax, BN statistics),
optimizer, scheduler and grad-scaler states, every rank's RNG states (torch, CUDA, numpy, python),
the step, the data position (epoch, batch index, and the RNG states at the start of that epoch so
that shuffling data loaders re-create the same order) and the sha256 of the recipe lock.
RNG states are stored as tensors and plain lists so that no pickled object is needed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..recipe.errors import RecipeError
from ..util.atomic import atomic_save

CHECKPOINT_FORMAT = "recipe-engine/qat-checkpoint/1"
CHECKPOINT_FILE = "qat_checkpoint.pt"
BEST_FILE = "qat_best.pt"


# ----------------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (weights_only friendly)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


# ----------------------------------------------------------------------------- files
@dataclass
class Position:
    """Where training stands: steps done, and the next batch (epoch, index within this rank's shard)."""

    step: int = 0
    epoch: int = 0
    index: int = 0


def to_cpu(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor detached and moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash leaves the previous one intact)."""
    atomic_save(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **to_cpu(payload)}, tmp))


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; RecipeError if it is not one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is the file's fault
        raise RecipeError(f"{path}: cannot read the QAT checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RecipeError(f"{path}: not a recipe-engine QAT checkpoint ({CHECKPOINT_FORMAT})")
    return payload


def find_resumable(out: str | os.PathLike, sha256: str, resume: bool | None) -> dict[str, Any] | None:
    """The checkpoint to resume from, if any.

    ``resume=None`` (default): resume when the run directory has a checkpoint of the same recipe
    (same lock sha256), else start afresh. ``True``: such a checkpoint must exist. ``False``: ignore it.
    """
    path = Path(out) / CHECKPOINT_FILE
    if resume is False:
        return None
    if not path.is_file():
        if resume:
            raise RecipeError(f"--resume: {path} does not exist", hint="run once without --resume first")
        return None
    payload = load(path)
    if payload.get("sha256") != sha256:
        if resume:
            raise RecipeError(f"--resume: {path} belongs to another recipe (sha256 {str(payload.get('sha256'))[:12]}, "
                              f"this recipe {sha256[:12]})",
                              hint="use a new --out directory, or run without --resume to start afresh")
        return None
    return payload
