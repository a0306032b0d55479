"""Settings of the ``onnx-sparse`` export (spconv parts: NVIDIA libspconv's sparse ONNX)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..formats import register
from .base import CALL_INPUTS, CALL_OUTPUTS, MARGIN_DB, ExportBase


class OnnxSparseExport(ExportBase):
    """spconv parts: the libspconv sparse ONNX format."""

    format: Literal["onnx-sparse"] = Field(title="Format")
    layout: Literal["xyz", "zyx"] = Field("zyx", title="Index layout of the runtime voxel indices")
    source_layout: Literal["xyz", "zyx"] | None = Field(
        None,
        title="Model's index layout",
        description="Column order of the model's own voxel indices (default: same as `layout`). When it differs "
        "from `layout`, weights and geometry are converted (kernel axes and spatial shapes reversed).",
    )
    output_bound_headroom: float = Field(
        2.0, ge=1.0, title="Warn when max voxels seen x headroom exceeds output_bound",
        description="The export warns (and notes) when calibration comes within this factor of output_bound.")
    output_bound: int = Field(
        200000,
        ge=1,
        title="output_bound",
        description="Capacity in points of every conv (NVIDIA's exporters write 200000, libspconv's parser default "
        "is 150000; a nuScenes frame has 60k-120k voxels). Size it for deployment data, not the calibration set: "
        "the export fails if a layer produced more points in calibration and warns when it came within "
        "output_bound_headroom of it.",
    )
    inputs: dict[str, str] | None = CALL_INPUTS
    outputs: list[str] | None = CALL_OUTPUTS
    margin_db: float = MARGIN_DB
    compat: Literal["none", "cuda-centerpoint", "cuda-bevfusion"] = Field(
        "none",
        title="Compatibility profile",
        description="Write the file NVIDIA's application loads: 'cuda-centerpoint' (zyx; ScatterDense -> Reshape "
        "[1, C*Z, Y, X]) or 'cuda-bevfusion' (xyz or zyx; ScatterDense -> Transpose -> Reshape [1, C*Z, X, Y]), "
        "one output, int8 layers fed int8. 'none': the model's own output arrangement.",
    )
    allow_fp16_to_int8: bool = Field(
        False,
        title="Allow int8 layers that read fp16",
        description="Write int8 layers whose input tensor is fp16 (NVIDIA's exporters never do; libspconv does not "
        "document it). Without it such a chain is an error naming the share group that keeps it int8.",
    )

    @model_validator(mode="after")
    def _compat_chain(self) -> OnnxSparseExport:
        if self.compat == "cuda-centerpoint" and self.layout != "zyx":
            raise ValueError("compat: cuda-centerpoint needs layout: zyx (CUDA-CenterPoint indexes voxels z, y, x)")
        if self.compat != "none" and self.allow_fp16_to_int8:
            raise ValueError(f"compat: {self.compat} loads int8 chains only; remove allow_fp16_to_int8")
        return self



register("onnx-sparse", OnnxSparseExport, "recipe_engine.export.runner:run_sparse", capture="sparse",
         precheck="recipe_engine.export.precheck:precheck_sparse")
