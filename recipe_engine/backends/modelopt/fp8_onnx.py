"""Standard ONNX FP8 Q/DQ from modelopt's export.

modelopt 0.47 writes an FP8 quantizer as ``trt::TRT_FP8QuantizeLinear(x, scale)`` /
``trt::TRT_FP8DequantizeLinear(q, scale)``, custom ops only TensorRT knows. :func:`to_standard_fp8`
rewrites each into the standard opset-19 ``QuantizeLinear``/``DequantizeLinear`` with a
FLOAT8E4M3FN zero point (saturating, round to nearest even: what the TRT ops do), which onnxruntime's
CPU provider runs and TensorRT parses.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

TRT_OPS = {"TRT_FP8QuantizeLinear": "QuantizeLinear", "TRT_FP8DequantizeLinear": "DequantizeLinear"}
ZERO_POINT = "recipe_engine_fp8_zero_point"


def to_standard_fp8(model: onnx.ModelProto) -> int:
    """Rewrite modelopt's FP8 custom ops in place; returns how many nodes changed.

    Raises ``ValueError`` when the graph's default-domain opset is below 19 (FP8 Q/DQ needs 19).
    """
    nodes = [n for n in model.graph.node if n.domain == "trt" and n.op_type in TRT_OPS]
    if not nodes:
        return 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 19:
        raise ValueError(f"FP8 (format: fp8_e4m3) quantizers need ONNX opset >= 19 for FLOAT8E4M3FN Q/DQ; "
                         f"this export uses opset {opset}")
    if ZERO_POINT not in {t.name for t in model.graph.initializer}:
        model.graph.initializer.append(helper.make_tensor(ZERO_POINT, TensorProto.FLOAT8E4M3FN, [], [0.0]))
    quantized: set[str] = set()
    for node in nodes:
        node.op_type = TRT_OPS[node.op_type]
        node.domain = ""
        del node.input[2:]
        node.input.append(ZERO_POINT)
        if node.op_type == "QuantizeLinear":
            quantized.update(node.output)
    for info in model.graph.value_info:  # the exporter typed the custom ops' outputs as it guessed
        if info.name in quantized:
            info.type.tensor_type.elem_type = TensorProto.FLOAT8E4M3FN
    if not any(n.domain == "trt" for n in model.graph.node):
        keep = [o for o in model.opset_import if o.domain != "trt"]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return len(nodes)
