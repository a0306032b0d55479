"""The graph index the onnxruntime placement rewrites share (:mod:`.onnx_ort`, :mod:`.ort_thin`), and the
small Q/DQ helpers they read nodes with."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class OrtGraph:
    """Indexes over a model's graph (producer and consumers of each tensor), rebuilt after each structural change."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.refresh()
        self._count = 0

    def refresh(self) -> None:
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.g.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def constant(self, hint: str, value: np.ndarray) -> str:
        self._count += 1
        name = f"{hint}__ort{self._count}"
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.g.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__ort{self._count}"


def axis_of(node: onnx.NodeProto, default: int = 1) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), default)


def attr_of(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def is_activation_q(graph: OrtGraph, node: onnx.NodeProto) -> bool:
    return (node.op_type == "QuantizeLinear" and node.input[0] not in graph.inits and len(node.input) == 3
            and node.input[1] in graph.inits and graph.array(node.input[1]).size == 1)


def amax_of(graph: OrtGraph, q: onnx.NodeProto) -> float:
    zp = graph.array(q.input[2])
    return float(graph.array(q.input[1])) * (255.0 if zp.dtype == np.uint8 else 127.0)


def dequantizers(graph: OrtGraph, q: onnx.NodeProto) -> list[onnx.NodeProto]:
    return [c for c in graph.consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"]


def set_params(graph: OrtGraph, q: onnx.NodeProto, scale: str, zero_point: str) -> None:
    for node in [q, *dequantizers(graph, q)]:
        node.input[1], node.input[2] = scale, zero_point


def output_quantized(graph: OrtGraph, node: onnx.NodeProto) -> bool:
    """The op's output is read by a Q (directly or through a Relu read only by Qs)."""
    readers = graph.consumers.get(node.output[0], [])
    for reader in readers:
        if reader.op_type == "QuantizeLinear":
            return True
        if reader.op_type == "Relu":
            after = graph.consumers.get(reader.output[0], [])
            if after and all(r.op_type == "QuantizeLinear" for r in after):
                return True
    return False
