"""Quantization-aware training: the QAT loop, checkpoints and resume, torch.distributed support.

``qat.run_qat`` (the recipe's ``qat:`` step), ``optim.param_groups``/``build_optimizer``/
``build_scheduler`` (also for users' own loops), ``loss.total_loss``, ``checkpoint`` (resumable
state) and ``distributed`` (torchrun, shards, calibration statistics across ranks). Attributes are
imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "run_qat": "qat",
    "param_groups": "optim",
    "build_optimizer": "optim",
    "build_scheduler": "optim",
    "total_loss": "loss",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'recipe_engine.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
