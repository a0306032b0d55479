"""Turn an exported FP32 ONNX graph (with Q/DQ pairs) into an FP16 graph.

After export, float32 initializers, ``Constant`` values, ``Cast(to=FLOAT)`` nodes and the graph
inputs/outputs become float16. Inputs that ONNX requires to stay float32 keep it (``Resize``
``roi``/``scales``, ``Upsample`` ``scales``). Quantization scales stay valid because the
Q/DQ pairs keep computing in float32, whatever the opset: they keep their float32 scales (and
float32 weights), and ``Cast`` nodes convert activations to float32 before each
``QuantizeLinear`` and back to float16 after each ``DequantizeLinear``.

Why not float16 scales at opset >= 19 (where Q/DQ accept float16): a per-channel weight scale
below 6.1e-5 (amax < 7.8e-3, common for small filters) is subnormal in float16 and loses its
precision, and onnxruntime 1.32's CPU kernels gave wrong results (overflowing convolutions) for
such graphs of the CenterPoint BEV head, which made them unverifiable here.
For TensorRT, build from the FP32 Q/DQ file with ``--int8 --fp16``: TensorRT picks FP16 for the
layers Q/DQ leave unquantized.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..recipe.errors import RecipeError

FLOAT32_ONLY_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
QDQ = ("QuantizeLinear", "DequantizeLinear")


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _keep_fp32(graph: onnx.GraphProto) -> set[str]:
    """Names of tensors that must stay float32."""
    keep: set[str] = set()
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        for index in FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                keep.add(node.input[index])
        if node.op_type in QDQ:
            keep.add(node.input[1])
            if node.op_type == "QuantizeLinear" and node.input[0] in initializers:
                keep.add(node.input[0])  # weights quantized in float32: no Cast needed
    return keep


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` (see the module docstring); raises RecipeError if the result is invalid."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep = _keep_fp32(graph)

    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for node in graph.node:
        feeds_fp32 = any(o in keep for o in node.output)
        if node.op_type == "Constant" and not feeds_fp32:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
        elif node.op_type == "Cast" and not feeds_fp32:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        elif node.op_type == "ConstantOfShape" and not feeds_fp32:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]

    _wrap_qdq_in_casts(graph, keep)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred)
    except Exception as exc:  # onnx raises several exception types for type errors
        raise RecipeError(f"fp16 conversion produced an invalid graph: {exc}",
                          hint="export with fp16: false, or report the operator that failed") from None
    return model


def _wrap_qdq_in_casts(graph: onnx.GraphProto, keep: set[str]) -> None:
    """float16 activations -> Cast(float32) -> Q -> DQ -> Cast(float16)."""
    nodes: list[onnx.NodeProto] = []
    casts: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in keep:
            source = node.input[0]
            if source not in casts:
                casts[source] = f"{source}__fp32"
                nodes.append(helper.make_node("Cast", [source], [casts[source]], to=TensorProto.FLOAT,
                                              name=f"{source}__to_fp32"))
            node.input[0] = casts[source]
            nodes.append(node)
        elif node.op_type == "DequantizeLinear":
            original = node.output[0]
            node.output[0] = f"{original}__fp32"
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [node.output[0]], [original], to=TensorProto.FLOAT16,
                                          name=f"{node.name or original}__to_fp16"))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
