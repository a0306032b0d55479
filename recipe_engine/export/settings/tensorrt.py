"""Settings of the ``tensorrt`` export (an engine built from an onnx-qdq export, GPU only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ...recipe.paths import safe_relative_path
from ..formats import register
from .base import MARGIN_DB, ExportBase


class TensorRTExport(ExportBase):
    """A TensorRT engine built from an onnx-qdq export (GPU only)."""

    format: Literal["tensorrt"] = Field(title="Format")
    source: str = Field(title="Source", description="`path` of the onnx-qdq export to build from.")

    _source = field_validator("source")(classmethod(lambda cls, v: str(safe_relative_path(v, reserved=False))))
    workspace_gb: float = Field(2.0, gt=0, title="Workspace (GiB)")
    required: bool = Field(False, title="Required", description="Fail (instead of skip) without a GPU.")
    shapes: dict[str, dict[Literal["min", "opt", "max"], list[int]]] | None = Field(
        None,
        title="Optimisation profile",
        description="min/opt/max shape per input name; default: 1 on each dynamic axis for min, the captured "
        "shape for opt and max.",
    )
    margin_db: float = MARGIN_DB


    def reference_errors(self, earlier: list[ExportBase]) -> list[tuple[tuple[str | int, ...], str]]:
        qdq_paths = [e.path for e in earlier if e.format == "onnx-qdq"]
        if self.source in qdq_paths:
            return []
        known = ", ".join(sorted(qdq_paths)) or "none"
        return [(("source",), f"source {self.source!r} is not the path of an earlier onnx-qdq export "
                 f"(earlier onnx-qdq paths: {known})")]


register("tensorrt", TensorRTExport, "recipe_engine.export.runner:run_tensorrt", capture=None)
