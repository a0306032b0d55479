"""What every ``export:`` entry has (module, path) and the fields several formats share."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from ...recipe.sections import Section
from ...recipe.validators import check_artifact

MARGIN_DB = Field(
    0.5,
    ge=0,
    title="SQNR margin (dB)",
    description="The export fails when the runtime's output SQNR vs FP32 is more than this below PyTorch "
    "fake-quant's on the same inputs, or when its difference from PyTorch has a systematic part (offset/gain per "
    "channel) above -10 dB of the quantization noise.",
)
CALL_INPUTS = Field(
    None,
    title="Inputs",
    description="File input name -> path of a tensor in the module's call: a forward parameter, then dict keys or "
    "list positions (`batch_dict.voxel_features`). For modules that take dicts; goes with `outputs`.",
)
CALL_OUTPUTS = Field(
    None,
    title="Outputs",
    description="Paths of the output tensors in the module's return value (`spatial_features`: key of a returned "
    "dict; `0`: first item of a tuple); each is also the output's name.",
)
REMOVED_KEYS = {
    "tolerance": "verification compares SQNR vs FP32 with PyTorch fake-quant's; use `margin_db` (default 0.5)",
    "max_fraction": "verification compares SQNR vs FP32 with PyTorch fake-quant's; use `margin_db` (default 0.5)",
}


class ExportBase(Section):
    module: str | None = Field(
        None, title="Module", description="Sub-module path to export (default: the whole model)."
    )
    path: str = Field(
        title="Path",
        description="Output file name inside the run directory: relative, no '..' or hidden components, not one "
        "of the files the run writes itself (recipe.lock.yaml, model.pt, metrics.json, report.md, ...).",
    )

    _path = field_validator("path")(classmethod(lambda cls, v: check_artifact(v)))

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in REMOVED_KEYS.items():
                if key in data:
                    raise ValueError(f"`{key}` was removed: {why}")
        return data

    def reference_errors(self, earlier: list[ExportBase]) -> list[tuple[tuple[str | int, ...], str]]:
        """Checks against the entries before this one: ``(key path inside this entry, message)`` pairs."""
        return []

