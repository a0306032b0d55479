"""``onnx-sparse`` graph writing: the planned convs, Adds and Relus as libspconv ONNX nodes.

Tensors are named "0", "1", ... in production order; weights and biases are FP16 ``raw_data``
initializers ``spconv{k}.weight`` / ``spconv{k}.bias``; each output gets its ScatterDense and the
Transpose / Reshape of its :class:`~.scn_tail.OutputPlan`. Nothing is decided here: the plans come
from :mod:`.scn_plan`.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .scn_plan import ConvPlan, flip
from .scn_tail import OutputPlan
from .sparse_trace import Op, SparseTrace


def fp16_initializer(name: str, tensor: torch.Tensor) -> onnx.TensorProto:
    array = tensor.detach().cpu().float().numpy().astype(np.float16)
    proto = numpy_helper.from_array(array, name)
    if not proto.HasField("raw_data"):  # numpy_helper writes raw_data; make sure
        proto = helper.make_tensor(name, TensorProto.FLOAT16, array.shape, array.tobytes(), raw=True)
    return proto


def write_graph(trace: SparseTrace, ops: list[Op], alias: dict[int, int], convs: dict[int, ConvPlan],
          adds: dict[int, dict], outputs: list[OutputPlan], layout: str, convert: bool,
          bound: int) -> onnx.ModelProto:
    names: dict[int, str] = {trace.input_value: "0"}
    counter = [1]
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    used_names: set[str] = set()
    kind_counter: dict[tuple[str, str], int] = {}

    def resolve(v: int) -> str:
        while v in alias:
            v = alias[v]
        return names[v]

    def fresh() -> str:
        name = str(counter[0])
        counter[0] += 1
        return name

    def node_name(base: str) -> str:
        name, n = base, 1
        while name in used_names:
            name = f"{base}_{n}"
            n += 1
        used_names.add(name)
        return name

    def auto_name(path: str, kind: str) -> str:
        number = kind_counter.get((path, kind), 0)
        kind_counter[(path, kind)] = number + 1
        return node_name(f"{path}.{kind}{number}" if path else f"{kind}{number}")

    scatter_out: dict[int, str] = {}
    conv_index = 0
    for op in ops:
        if op.kind == "conv":
            plan = convs[id(op)]
            weight_name, bias_name = f"spconv{conv_index}.weight", f"spconv{conv_index}.bias"
            conv_index += 1
            initializers += [fp16_initializer(weight_name, plan.weight), fp16_initializer(bias_name, plan.bias)]
            attrs = dict(plan.attrs)
            attrs.update(activation=plan.activation, output_bound=bound, precision=plan.precision,
                         output_precision=plan.output_precision)
            if plan.input_range is not None:
                attrs["input_dynamic_range"] = plan.input_range
            if plan.weight_ranges is not None:
                attrs["weight_dynamic_ranges"] = plan.weight_ranges
            source = resolve(op.inputs[0])
            names[op.output] = fresh()
            nodes.append(helper.make_node("SparseConvolution", [source, weight_name, bias_name], [names[op.output]],
                                          name=node_name(plan.name), **attrs))
        elif op.kind == "add":
            info = adds[id(op)]
            inputs = [resolve(v) for v in op.inputs]
            attrs = {"precision": info["precision"], "output_precision": info["output_precision"]}
            if info["ranges"][0] is not None:
                attrs.update(input0_dynamic_range=info["ranges"][0], input1_dynamic_range=info["ranges"][1])
            names[op.output] = fresh()
            nodes.append(helper.make_node("Add", inputs, [names[op.output]], name=node_name(info["name"]), **attrs))
        elif op.kind == "relu":
            source = resolve(op.inputs[0])
            names[op.output] = fresh()
            nodes.append(helper.make_node("Relu", [source], [names[op.output]], name=auto_name(op.path, "relu")))
        elif op.kind == "scatter":
            spatial = flip(op.info["spatial_shape"], convert)
            names[op.output] = fresh()
            scatter_out[op.output] = names[op.output]
            nodes.append(helper.make_node(
                "ScatterDense", [resolve(op.inputs[0])], [names[op.output]], name=auto_name(op.path, "dense"),
                input_spatial_shape=spatial, format=layout, output_shape=[1, op.info["channels"], *spatial]))
    graph_outputs = []
    for out in outputs:
        scatter_op = next(op for op in ops if op.kind == "scatter" and op.output == out.scatter)
        current = scatter_out[out.scatter]
        shape = [1, scatter_op.info["channels"], *flip(scatter_op.info["spatial_shape"], convert)]
        if out.perm is not None:
            name = fresh()
            nodes.append(helper.make_node("Transpose", [current], [name], name=auto_name(scatter_op.path, "transpose"),
                                          dims=list(out.perm)))
            current, shape = name, [shape[p] for p in out.perm]
        if out.dims is not None:
            name = fresh()
            nodes.append(helper.make_node("Reshape", [current], [name], name=auto_name(scatter_op.path, "reshape"),
                                          dims=list(out.dims)))
            current, shape = name, list(out.dims)
        graph_outputs.append(helper.make_tensor_value_info(current, TensorProto.FLOAT16, shape))
    in_channels = int(trace.input_features.shape[1])
    graph = helper.make_graph(nodes, "scn", [helper.make_tensor_value_info("0", TensorProto.FLOAT16, ["N", in_channels])],
                              graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="recipe-engine")
    model.ir_version = 6
    return model
