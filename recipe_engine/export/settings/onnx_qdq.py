"""Settings of the ``onnx-qdq`` export (dense parts: ONNX with Q/DQ pairs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..formats import register
from .base import CALL_INPUTS, CALL_OUTPUTS, MARGIN_DB, ExportBase


class OnnxQdqExport(ExportBase):
    """Dense parts: ONNX with QuantizeLinear/DequantizeLinear pairs."""

    format: Literal["onnx-qdq"] = Field(title="Format")
    target: Literal["tensorrt", "onnxruntime"] = Field(
        "tensorrt", title="Deployment target",
        description="tensorrt: Q/DQ on layer inputs and weights (TensorRT's placement). onnxruntime: placed for "
        "onnxruntime's CPU provider (uint8 activations, int8 weights, int32 biases, one Q per tensor) so that its "
        "optimiser builds QLinearConv/QLinearAdd/QLinearConcat kernels; verified against FP32.")
    opset: int = Field(17, ge=13, title="ONNX opset")
    fp16: bool = Field(False, title="FP16 graph")
    dynamic_axes: dict[str, dict[int, str]] | None = Field(None, title="Dynamic axes per input name")
    inputs: dict[str, str] | None = CALL_INPUTS
    outputs: list[str] | None = CALL_OUTPUTS
    margin_db: float = MARGIN_DB



register("onnx-qdq", OnnxQdqExport, "recipe_engine.export.runner:run_qdq",
         precheck="recipe_engine.export.precheck:precheck_qdq")
