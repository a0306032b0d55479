"""``model:`` and ``data:``: the factories a recipe names and the adapters between batches and model."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ..validators import check_callable
from . import Section


class FactoryRef(Section):
    """A callable named 'package.module:callable' and its keyword arguments."""

    factory: str = Field(title="Factory", description="'package.module:callable' returning the object.")
    kwargs: dict[str, Any] = Field(default_factory=dict, title="Keyword arguments")

    _check = field_validator("factory")(classmethod(lambda cls, v: check_callable(v)))


class ModelSection(FactoryRef):
    """How to build the FP32 model."""

    checkpoint: str | None = Field(
        None,
        title="Checkpoint",
        description="State dict file, loaded with torch.load(weights_only=True); relative to the recipe.",
    )
    checkpoint_key: str | None = Field(
        None, title="Checkpoint key", description="Key of the state dict inside the checkpoint (e.g. 'model')."
    )
    strict: bool = Field(True, title="Strict loading", description="load_state_dict(strict=...).")


class DataSection(Section):
    """Data factories and the adapters that connect batches to the model."""

    calibration: FactoryRef = Field(title="Calibration data", description="Iterable of calibration batches.")
    validation: FactoryRef | None = Field(
        None, title="Validation data", description="Batches for `evaluate` (default: calibration data)."
    )
    train: FactoryRef | None = Field(None, title="Training data", description="Batches for QAT.")
    forward: str | None = Field(
        None,
        title="Forward adapter",
        description="'module:callable' (model, batch) -> output; default model(**batch) for dicts, "
        "model(*batch) for tuples/lists, model(batch) otherwise.",
    )
    evaluate: str | None = Field(
        None,
        title="Evaluate",
        description="'module:callable' (model, batches) -> {metric: value}, used in reports and tuning.",
    )
    loss: str | None = Field(
        None, title="Loss", description="'module:callable' (output, batch) -> scalar loss, used by QAT."
    )

    _check = field_validator("forward", "evaluate", "loss")(classmethod(lambda cls, v: check_callable(v)))

