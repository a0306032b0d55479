"""Model and data construction from a recipe's ``model:`` and ``data:`` sections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .recipe.errors import RecipeError
from .recipe.loader import LoadedRecipe
from .recipe.schema import FactoryRef
from .util.imports import import_callable


def default_forward(model: nn.Module, batch: Any) -> Any:
    """model(**batch) for dicts, model(*batch) for tuples/lists, model(batch) otherwise."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def build_model(loaded: LoadedRecipe) -> nn.Module:
    """Build the FP32 model from ``model.factory`` and load ``model.checkpoint`` (weights only)."""
    section = loaded.spec.model
    if section is None:
        raise loaded.error(("model",), "this recipe has no `model:` section",
                           hint="add model: {factory: package.module:build}")
    factory = import_callable(section.factory, what="model.factory")
    try:
        model = factory(**section.kwargs)
    except TypeError as exc:
        raise loaded.error(("model", "kwargs"), f"{section.factory} rejected its kwargs: {exc}") from None
    if not isinstance(model, nn.Module):
        raise loaded.error(("model", "factory"), f"{section.factory} returned {type(model).__name__}, not an nn.Module")
    if section.checkpoint:
        path = loaded.resolve_path(section.checkpoint, "model", "checkpoint")
        if not path.is_file():
            raise loaded.error(("model", "checkpoint"), f"checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors are the file's fault
            raise loaded.error(("model", "checkpoint"), f"cannot load {path} with weights_only=True: {exc}",
                               hint="save checkpoints as plain state dicts (tensors, dicts, numbers)") from None
        if section.checkpoint_key:
            state = state[section.checkpoint_key]
        missing, unexpected = model.load_state_dict(state, strict=section.strict)
        del missing, unexpected
    model.eval()
    return model


def make_data(loaded: LoadedRecipe, split: str) -> Any:
    """Call the data factory of ``data.<split>`` (calibration, validation, train)."""
    section = loaded.spec.data
    if section is None:
        raise loaded.error(("data",), "this recipe has no `data:` section",
                           hint="add data: {calibration: {factory: package.module:make_batches}}")
    ref: FactoryRef | None = getattr(section, split)
    if ref is None:
        if split == "validation":
            ref = section.calibration
        else:
            raise loaded.error(("data", split), f"data.{split} is not set")
    factory = import_callable(ref.factory, what=f"data.{split}.factory")
    try:
        return factory(**ref.kwargs)
    except TypeError as exc:
        raise loaded.error(("data", split, "kwargs"), f"{ref.factory} rejected its kwargs: {exc}") from None


def forward_fn(loaded: LoadedRecipe) -> Callable[[nn.Module, Any], Any]:
    section = loaded.spec.data
    if section is None or section.forward is None:
        return default_forward
    return import_callable(section.forward, what="data.forward")


def evaluate_fn(loaded: LoadedRecipe) -> Callable[[nn.Module, Any], dict] | None:
    section = loaded.spec.data
    if section is None or section.evaluate is None:
        return None
    return import_callable(section.evaluate, what="data.evaluate")


def run_evaluate(evaluate: Callable, model: nn.Module, batches: Any) -> dict[str, float]:
    """Evaluate in eval mode without gradients; check the result is a dict of numbers."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = evaluate(model, batches)
    finally:
        model.train(was_training)
    if not isinstance(result, dict):
        raise RecipeError(f"data.evaluate returned {type(result).__name__}; expected a dict like {{'mAP': 61.2}}")
    return {str(k): float(v) for k, v in result.items()}
