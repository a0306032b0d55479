"""The QAT loss: ``data.loss(output, batch)``, or the model's own output when it is a loss.

Either source may give a scalar tensor or a dict of losses (values: scalar tensors, or lists of
them, e.g. one per feature level); a dict is summed with ``qat.loss_weights`` (default weight 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe
from ..util.imports import import_callable

LossFn = Callable[[Any, Any], Any]


def loss_source(loaded: LoadedRecipe) -> LossFn | None:
    """``data.loss`` imported, or None when the model's output is the loss."""
    data = loaded.spec.data
    if data is None or data.loss is None:
        return None
    return import_callable(data.loss, what="data.loss")


def _scalar(value: Any, key: str) -> torch.Tensor:
    if isinstance(value, (list, tuple)):
        if not value:
            raise RecipeError(f"loss {key!r} is an empty list")
        return torch.stack([_scalar(v, key) for v in value]).sum()
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise RecipeError(f"loss {key!r} is not a scalar tensor ({shape})",
                          hint="reduce it in data.loss (e.g. .mean()), or give it a weight of 0 in qat.loss_weights")
    return value.reshape(())


def total_loss(value: Any, weights: Mapping[str, float] | None = None,
               loaded: LoadedRecipe | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """(scalar loss to minimise, the weighted parts as floats for logs)."""
    weights = dict(weights or {})
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise RecipeError(f"the loss is a tensor of shape {tuple(value.shape)}, not a scalar",
                              hint="set data.loss: 'module:callable' (output, batch) -> scalar loss or dict of losses")
        return value.reshape(()), {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"the loss is a {type(value).__name__}; expected a scalar tensor or a dict of losses",
                          hint="set data.loss: 'module:callable' (output, batch) -> scalar loss or dict of losses")
    unknown = sorted(set(weights) - set(value))
    if unknown:
        message = f"loss_weights names {unknown}, not among the losses {sorted(value)}"
        if loaded is not None:
            raise loaded.error(("qat", "loss_weights", unknown[0]), message)
        raise RecipeError(message)
    total: torch.Tensor | None = None
    parts: dict[str, float] = {}
    for key, item in value.items():
        weight = float(weights.get(key, 1.0))
        if weight == 0.0:
            continue
        term = _scalar(item, str(key)) * weight
        parts[str(key)] = float(term.detach())
        total = term if total is None else total + term
    if total is None:
        raise RecipeError("every loss has weight 0 in qat.loss_weights")
    return total, parts


def compute_loss(output: Any, batch: Any, source: LossFn | None, weights: Mapping[str, float] | None = None,
                 loaded: LoadedRecipe | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch from ``source(output, batch)`` or from ``output`` itself."""
    value = source(output, batch) if source is not None else output
    return total_loss(value, weights, loaded)
