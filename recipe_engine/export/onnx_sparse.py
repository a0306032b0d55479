"""``onnx-sparse``: a traced spconv module written in NVIDIA libspconv's sparse ONNX format.

From a :class:`~.sparse_trace.SparseTrace` this module
- folds ``Relu`` into the conv that feeds it (``activation="ReLU"``) when nothing else reads
  the conv's output, and drops a Relu after a conv that already applies ReLU;
- converts the coordinate order when the file's ``layout`` differs from the model's
  (``source_layout``): kernel axes of every weight and kernel/stride/padding/dilation/
  output_padding and spatial shapes are reversed; the runtime then gets indices with columns 1
  and 3 swapped;
- decides precisions: a conv is ``int8`` when its input and weight quantizers are both enabled,
  an Add when its op-site quantizer is; a producer's ``output_precision`` is ``int8`` only when
  every reader is an int8 layer reading it with one and the same dynamic range (so one scale
  serves all of them), else ``fp16`` (always fp16 before ScatterDense). When the two producers
  of an Add disagree, both are set to fp16 output (the Add keeps its precision);
- writes tensors named "0", "1", ... in production order, FP16 ``raw_data`` initializers
  ``spconv{k}.weight`` / ``spconv{k}.bias`` (zero bias when the conv has none), and the
  ScatterDense / Transpose / Reshape tail of each output.

The batch axis is 1 in ``output_shape`` and in Reshape ``dims``: libspconv runs one sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..quant import backend, sparse
from ..recipe.errors import RecipeError
from .quantizers import amax_problem
from .scn_checks import TRANSPOSE_DIMS, check_scn
from .sparse_trace import Op, SparseTrace

REVERSE = [0, 1, 4, 3, 2]  # N, C, a, b, c -> N, C, c, b, a


@dataclass
class ConvPlan:
    op: Op
    name: str
    weight: torch.Tensor  # [O, k0, k1, k2, I] in the file's layout
    bias: torch.Tensor
    attrs: dict[str, Any]
    precision: str
    input_range: float | None = None
    weight_ranges: list[float] | None = None
    activation: str = "None"
    output_precision: str = "fp16"
    note: str | None = None


@dataclass
class OutputPlan:
    """How one graph output is made from a scatter: Transpose ``perm`` (or None), Reshape ``dims`` (or None)."""

    scatter: int  # value index of the scatter op output
    perm: list[int] | None
    dims: list[int] | None
    exact: bool  # equals the PyTorch module's output (else the spatial axes are in the runtime's order)
    axes: list[str]


@dataclass
class SparseExport:
    model: onnx.ModelProto
    outputs: list[OutputPlan]
    point_counts: dict[str, int]
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _flip(values: list[int], convert: bool) -> list[int]:
    return list(reversed(values)) if convert else list(values)


def _quantizer_names(names_of: dict[int, list[str]], quantizer: Any) -> str:
    return " = ".join(names_of.get(id(quantizer), [])) or "<unnamed quantizer>"


def _check_int8_quantizer(quantizer: Any, label: str, per_channel: int | None = None) -> None:
    if backend.describe(quantizer).get("format", "int") != "int":
        raise RecipeError(f"onnx-sparse: quantizer {label} is {backend.describe(quantizer)['format']}; libspconv "
                          "runs int8 or fp16 layers only", hint="give sparse convolutions an int8 quantizer")
    problem = amax_problem(quantizer)
    if problem:
        raise RecipeError(f"onnx-sparse: quantizer {label} {problem}",
                          hint="calibrate on data that reaches this layer, or `disable` it")
    if quantizer.num_bits != 8 or quantizer.unsigned:
        raise RecipeError(f"onnx-sparse: quantizer {label} is {'unsigned ' if quantizer.unsigned else ''}"
                          f"{quantizer.num_bits}-bit; libspconv runs signed 8-bit", hint="use num_bits: 8, unsigned: false")
    amax = backend.get_amax(quantizer)
    if per_channel is None and amax.numel() != 1:
        raise RecipeError(f"onnx-sparse: input quantizer {label} is per-channel; libspconv takes one input range")
    if per_channel is not None:
        if amax.numel() not in (1, per_channel):
            raise RecipeError(f"onnx-sparse: weight quantizer {label} has {amax.numel()} amax values for "
                              f"{per_channel} output channels")
        if amax.numel() > 1 and quantizer.axis not in (0, (0,)):
            raise RecipeError(f"onnx-sparse: weight quantizer {label} quantizes axis {quantizer.axis}; spconv "
                              "weights [O, k.., I] need per-output-channel axis 0", hint="use per_channel: true")


def plan_conv(op: Op, convert: bool, names_of: dict[int, list[str]]) -> ConvPlan:
    """Geometry, FP16-ready weights and quantization of one traced conv."""
    module = op.module
    kind = sparse.original_class(module).__name__
    if module.ndim != 3:
        raise RecipeError(f"onnx-sparse: {op.path} is a {module.ndim}D sparse conv; libspconv runs 3D convs")
    if module.transposed and not module.inverse:
        raise RecipeError(f"onnx-sparse: {op.path} ({kind}) is a transposed sparse conv, which the format cannot "
                          "express", hint="use SparseInverseConv3d with the indice_key of the downsampling conv")
    if getattr(module, "groups", 1) != 1:
        raise RecipeError(f"onnx-sparse: {op.path} uses groups={module.groups}; libspconv needs groups=1")
    out_c, in_c = int(module.out_channels), int(module.in_channels)
    weight = module.weight.detach().float().cpu()
    if tuple(weight.shape) != (out_c, *module.kernel_size, in_c):
        raise RecipeError(f"onnx-sparse: {op.path} weight has shape {tuple(weight.shape)}, expected spconv 2.x "
                          f"[O, k0, k1, k2, I] = {(out_c, *module.kernel_size, in_c)}")
    bias = module.bias.detach().float().cpu() if module.bias is not None else torch.zeros(out_c)
    if convert:
        weight = weight.permute(0, 3, 2, 1, 4).contiguous()
    activation = sparse.activation_name(module)
    if activation not in ("None", "ReLU"):
        raise RecipeError(f"onnx-sparse: {op.path} uses activation {activation}; libspconv has ReLU and None only")
    name = op.path if op.info["call"] == 0 else f"{op.path}:{op.info['call']}"
    attrs = {
        "ndim": 3,
        "input_spatial_shape": _flip(op.info["in_spatial"], convert),
        "output_spatial_shape": _flip(op.info["out_spatial"], convert),
        "in_channels": in_c, "out_channels": out_c,
        "kernel_size": _flip(list(module.kernel_size), convert),
        "dilation": _flip(list(module.dilation), convert),
        "padding": _flip(list(module.padding), convert),
        "stride": _flip(list(module.stride), convert),
        "output_padding": _flip(list(module.output_padding), convert),
        "groups": 1,
        "subm": int(bool(module.subm)), "transposed": 0, "inverse": int(bool(module.inverse)),
        "rulebook": module.indice_key or "",
        "input_shape": [op.info["in_points"], in_c], "output_shape": [op.info["out_points"], out_c],
    }
    if module.inverse and not attrs["rulebook"]:
        raise RecipeError(f"onnx-sparse: inverse conv {op.path} has no indice_key")
    plan = ConvPlan(op, name, weight, bias, attrs, "fp16", activation=activation)
    input_q = backend.module_quantizer(module, "input")
    weight_q = backend.module_quantizer(module, "weight")
    enabled = [q is not None and backend.is_enabled(q) for q in (input_q, weight_q)]
    if all(enabled):
        _check_int8_quantizer(input_q, _quantizer_names(names_of, input_q))
        _check_int8_quantizer(weight_q, _quantizer_names(names_of, weight_q), per_channel=out_c)
        plan.precision = "int8"
        with torch.no_grad():  # store the weight PyTorch computes with: FP16 rounding cannot move its int8 grid
            quantized = weight_q(module.weight).detach().float().cpu()
        plan.weight = quantized.permute(0, 3, 2, 1, 4).contiguous() if convert else quantized
        plan.input_range = float(backend.get_amax(input_q).reshape(-1)[0])
        ranges = backend.get_amax(weight_q).float().reshape(-1)
        plan.weight_ranges = [float(r) for r in (ranges.expand(out_c) if ranges.numel() == 1 else ranges)]
    elif any(enabled):
        plan.note = (f"{op.path}: only its {'input' if enabled[0] else 'weight'} quantizer is enabled; "
                               "it runs fp16 (libspconv quantizes input and weight together)")
    return plan


# ----------------------------------------------------------------------------- graph simplification
def _fold_relus(trace: SparseTrace, convs: dict[int, ConvPlan]) -> tuple[list[Op], dict[int, int]]:
    """Drop Relu ops that a conv can apply itself; returns the remaining ops and value aliases."""
    alias: dict[int, int] = {}
    readers: dict[int, int] = {}
    for op in trace.ops:
        for v in op.inputs:
            readers[v] = readers.get(v, 0) + 1
    producer = {op.output: op for op in trace.ops}
    kept: list[Op] = []
    for op in trace.ops:
        if op.kind == "relu":
            source = alias.get(op.inputs[0], op.inputs[0])
            making = producer.get(source)
            if making is not None and making.kind == "conv":
                plan = convs[id(making)]
                if plan.activation == "ReLU":
                    alias[op.output] = source
                    continue
                if readers.get(op.inputs[0], 0) == 1 and op.inputs[0] not in trace.outputs:
                    plan.activation = "ReLU"
                    alias[op.output] = source
                    continue
            if making is not None and making.kind == "relu":
                alias[op.output] = source
                continue
        kept.append(op)
    return kept, alias


# ----------------------------------------------------------------------------- dense tails
def plan_output(trace: SparseTrace, value: int, layout: str, convert: bool) -> OutputPlan:
    """The ScatterDense -> [Transpose] -> [Reshape] tail that reproduces output ``value``."""
    producer = {op.output: op for op in trace.ops}
    chain: list[Op] = []
    current = producer[value]
    while current.kind != "scatter":
        chain.append(current)
        current = producer[current.inputs[0]]
    chain.reverse()
    scatter = current
    axes = ["N", "s0", "s1", "s2", "C"]  # the channels-last scatter inside SparseConvTensor.dense()
    model_shape = list(trace.values[scatter.output].shape)
    reshape: list[int] | None = None
    for op in chain:
        if op.kind == "permute":
            if reshape is not None:
                raise RecipeError("onnx-sparse: a permute after a reshape of the dense output cannot be expressed")
            axes = [axes[p] for p in op.info["perm"]]
            model_shape = list(trace.values[op.output].shape)
        elif op.kind == "reshape":
            reshape = list(op.info["shape"])
    if axes[:2] != ["N", "C"]:
        raise RecipeError(f"onnx-sparse: the dense output has axes {axes}; ScatterDense writes channels first "
                          "(use SparseConvTensor.dense() with channels_first=True)")
    spatial = ["s0", "s1", "s2"] if not convert else ["s2", "s1", "s0"]
    file_axes = ["N", "C", *spatial]
    allowed = TRANSPOSE_DIMS[layout]
    candidates = [(None, file_axes), (allowed, [file_axes[p] for p in allowed])]
    exact = next(((p, a) for p, a in candidates if a == axes), None)
    if exact is None and not convert:
        raise RecipeError(f"onnx-sparse: the model arranges its dense output as {axes}; after a {layout!r} "
                          f"ScatterDense libspconv can only produce {candidates[0][1]} or {candidates[1][1]}")
    # converting layouts may make the model's arrangement inexpressible: take the closest candidate, keeping the
    # axis that follows C (it merges with C in BEV reshapes), and let verification compare in that arrangement
    chosen = exact or max(candidates, key=lambda c: (c[1][2] == axes[2],
                                                     sum(x == y for x, y in zip(c[1], axes, strict=True))))
    out_shape = _axes_shape(scatter, chosen[1])
    dims = None
    if reshape is not None:
        batch = trace.values[scatter.output].shape[0]
        if reshape[0] != batch:
            raise RecipeError(f"onnx-sparse: the dense output is reshaped to {reshape}, which changes the batch axis")
        if exact is not None:
            dims = [1, *reshape[1:]]
        else:
            dims = [1, *_merge_like(model_shape, reshape, out_shape)[1:]]
    return OutputPlan(scatter.output, chosen[0], dims, exact is not None, chosen[1])


def _axes_shape(scatter: Op, axes: list[str]) -> list[int]:
    info = scatter.info
    sizes = {"N": info["batch_size"], "C": info["channels"]}
    for i, size in enumerate(info["spatial_shape"]):
        sizes[f"s{i}"] = size
    return [sizes[a] for a in axes]


def _merge_like(model_shape: list[int], reshape: list[int], file_shape: list[int]) -> list[int]:
    """Apply the model's reshape (a merge of adjacent axes) to the file's axis sizes."""
    groups: list[list[int]] = []
    axis = 0
    for size in reshape:
        group, product = [], 1
        while axis < len(model_shape) and (product < size or not group):
            product *= model_shape[axis]
            group.append(axis)
            axis += 1
        while axis < len(model_shape) and model_shape[axis] == 1 and product == size and size != 1:
            group.append(axis)
            axis += 1
        if product != size:
            raise RecipeError(f"onnx-sparse: reshape {model_shape} -> {reshape} is not a merge of adjacent axes; "
                              "it cannot be carried over to another layout")
        groups.append(group)
    return [int(np.prod([file_shape[a] for a in g])) for g in groups]


# ----------------------------------------------------------------------------- precisions
def _assign_precisions(ops: list[Op], convs: dict[int, ConvPlan], adds: dict[int, dict], alias: dict[int, int],
                       notes: list[str]) -> None:
    def resolve(v: int) -> int:
        while v in alias:
            v = alias[v]
        return v

    producer = {op.output: op for op in ops}
    readers: dict[int, list[tuple[Op, int]]] = {}
    for op in ops:
        for slot, v in enumerate(op.inputs):
            readers.setdefault(resolve(v), []).append((op, slot))

    def needs(v: int) -> list[tuple[str, float | None]]:
        found: list[tuple[str, float | None]] = []
        for op, slot in readers.get(v, []):
            if op.kind == "conv":
                plan = convs[id(op)]
                found.append((plan.precision, plan.input_range))
            elif op.kind == "add":
                info = adds[id(op)]
                found.append((info["precision"], info["ranges"][slot] if info["precision"] == "int8" else None))
            elif op.kind == "relu":
                found += needs(op.output)
            else:
                found.append(("fp16", None))
        return found

    def set_output(op: Op, value: str) -> None:
        if op.kind == "conv":
            convs[id(op)].output_precision = value
        else:
            adds[id(op)]["output_precision"] = value

    def get_output(v: int) -> str:
        op = producer.get(resolve(v))
        while op is not None and op.kind == "relu":
            op = producer.get(resolve(op.inputs[0]))
        if op is None:
            return "fp16"
        return convs[id(op)].output_precision if op.kind == "conv" else adds[id(op)]["output_precision"]

    for op in ops:
        if op.kind in ("conv", "add"):
            wanted = needs(op.output)
            ranges = {r for _, r in wanted}
            int8 = bool(wanted) and all(p == "int8" for p, _ in wanted) and len(ranges) == 1 and \
                None not in ranges
            if not int8 and wanted and all(p == "int8" for p, _ in wanted):
                ranges_text = ", ".join(f"{r:.4g}" for r in sorted(r for r in ranges if r is not None))
                notes.append(f"{_op_name(op, convs)}: its readers quantize it with different ranges ({ranges_text}); "
                             "output stays fp16 (share those quantizers to keep it int8)")
            set_output(op, "int8" if int8 else "fp16")
    changed = True
    while changed:
        changed = False
        for op in ops:
            if op.kind != "add":
                continue
            precisions = [get_output(v) for v in op.inputs]
            if precisions[0] != precisions[1]:
                for v in op.inputs:
                    source = producer.get(resolve(v))
                    while source is not None and source.kind == "relu":
                        source = producer.get(resolve(source.inputs[0]))
                    if source is not None and get_output(v) != "fp16":
                        set_output(source, "fp16")
                        notes.append(f"{_op_name(source, convs)}: output set to fp16 so that both inputs of "
                                     f"{adds[id(op)]['name']} have one precision")
                changed = True


def _op_name(op: Op, convs: dict[int, ConvPlan]) -> str:
    return convs[id(op)].name if op.kind == "conv" else op.path


# ----------------------------------------------------------------------------- emission
def _fp16_initializer(name: str, tensor: torch.Tensor) -> onnx.TensorProto:
    array = tensor.detach().cpu().float().numpy().astype(np.float16)
    proto = numpy_helper.from_array(array, name)
    if not proto.HasField("raw_data"):  # numpy_helper writes raw_data; make sure
        proto = helper.make_tensor(name, TensorProto.FLOAT16, array.shape, array.tobytes(), raw=True)
    return proto


def build_scn(trace: SparseTrace, *, layout: str, source_layout: str, headroom: float,
              fixed_bound: int | None, point_counts: dict[str, int], input_points: int,
              names_of: dict[int, list[str]]) -> SparseExport:
    """Turn ``trace`` into a checked libspconv ModelProto."""
    convert = layout != source_layout
    notes: list[str] = []
    convs: dict[int, ConvPlan] = {}
    conv_ops = [op for op in trace.ops if op.kind == "conv"]
    for op in conv_ops:
        plan = plan_conv(op, convert, names_of)
        if plan.note:
            notes.append(plan.note)
        convs[id(op)] = plan
    _check_rulebooks(conv_ops, convs)
    ops, alias = _fold_relus(trace, convs)

    adds: dict[int, dict] = {}
    add_counter: dict[str, int] = {}
    for op in ops:
        if op.kind == "add":
            quantizers = op.info["quantizers"]
            enabled = [q is not None and backend.is_enabled(q) for q in quantizers]
            number = add_counter.get(op.path, 0)
            add_counter[op.path] = number + 1
            info = {"name": f"{op.path}.add{number}" if op.path else f"add{number}", "precision": "fp16",
                    "ranges": [None, None], "output_precision": "fp16"}
            if all(enabled):
                for q in quantizers:
                    _check_int8_quantizer(q, _quantizer_names(names_of, q))
                info["precision"] = "int8"
                info["ranges"] = [float(backend.get_amax(q).reshape(-1)[0]) for q in quantizers]
            adds[id(op)] = info
    _assign_precisions(ops, convs, adds, alias, notes)

    # output_bound: the most points any layer (or the input) produced in calibration, with headroom
    counts = {plan.name: max(point_counts.get(plan.op.path, 0), plan.op.info["out_points"]) for plan in convs.values()}
    largest = max([input_points, *counts.values()])
    bound = fixed_bound if fixed_bound is not None else int(math.ceil(largest * headroom))
    low = {name: c for name, c in counts.items() if c > bound}
    if low:
        name, count = max(low.items(), key=lambda kv: kv[1])
        raise RecipeError(f"onnx-sparse: output_bound {bound} is below the {count} points {name} produced in "
                          f"calibration ({len(low)} layer(s) affected)",
                          hint=f"raise output_bound to at least {count} (or leave it unset: max points x headroom)")

    outputs = [plan_output(trace, v, layout, convert) for v in trace.outputs]
    model = _emit(trace, ops, alias, convs, adds, outputs, layout, convert, bound)
    check_scn(model, counts)
    int8_convs = sum(1 for p in convs.values() if p.precision == "int8")
    summary = {"convs": len(convs), "int8_convs": int8_convs, "fp16_convs": len(convs) - int8_convs,
               "adds": len(adds), "int8_adds": sum(1 for a in adds.values() if a["precision"] == "int8"),
               "relus": sum(1 for op in ops if op.kind == "relu"), "output_bound": bound,
               "max_points": largest, "layout": layout, "source_layout": source_layout}
    return SparseExport(model, outputs, counts, summary, notes)


def _check_rulebooks(conv_ops: list[Op], convs: dict[int, ConvPlan]) -> None:
    """Convs sharing an indice_key must see the same coordinates with the same geometry."""
    first: dict[str, Op] = {}
    for op in conv_ops:
        plan = convs[id(op)]
        key = plan.attrs["rulebook"]
        if not key or plan.attrs["inverse"]:
            continue
        if key not in first:
            first[key] = op
            continue
        ref = convs[id(first[key])].attrs
        geometry = ("kernel_size", "stride", "padding", "dilation", "subm")
        if any(ref[g] != plan.attrs[g] for g in geometry):
            raise RecipeError(f"onnx-sparse: {plan.name} and {convs[id(first[key])].name} share indice_key {key!r} "
                              "but differ in geometry; libspconv would reuse the wrong index mapping")
        a, b = first[key].info["in_indices"], op.info["in_indices"]
        if a is not b and not torch.equal(a, b):
            raise RecipeError(f"onnx-sparse: {plan.name} and {convs[id(first[key])].name} share indice_key {key!r} "
                              "but see different input coordinates", hint="give them different indice_keys")


def _emit(trace: SparseTrace, ops: list[Op], alias: dict[int, int], convs: dict[int, ConvPlan],
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
            initializers += [_fp16_initializer(weight_name, plan.weight), _fp16_initializer(bias_name, plan.bias)]
            attrs = dict(plan.attrs)
            attrs.update(activation=plan.activation, output_bound=bound, precision=plan.precision,
                         output_precision=plan.output_precision)
            if plan.precision == "int8":
                attrs.update(input_dynamic_range=plan.input_range, weight_dynamic_ranges=plan.weight_ranges)
            source = resolve(op.inputs[0])
            names[op.output] = fresh()
            nodes.append(helper.make_node("SparseConvolution", [source, weight_name, bias_name], [names[op.output]],
                                          name=node_name(plan.name), **attrs))
        elif op.kind == "add":
            info = adds[id(op)]
            inputs = [resolve(v) for v in op.inputs]
            attrs = {"precision": info["precision"], "output_precision": info["output_precision"]}
            if info["precision"] == "int8":
                attrs.update(input0_dynamic_range=info["ranges"][0], input1_dynamic_range=info["ranges"][1])
            names[op.output] = fresh()
            nodes.append(helper.make_node("Add", inputs, [names[op.output]], name=node_name(info["name"]), **attrs))
        elif op.kind == "relu":
            source = resolve(op.inputs[0])
            names[op.output] = fresh()
            nodes.append(helper.make_node("Relu", [source], [names[op.output]], name=auto_name(op.path, "relu")))
        elif op.kind == "scatter":
            spatial = _flip(op.info["spatial_shape"], convert)
            names[op.output] = fresh()
            scatter_out[op.output] = names[op.output]
            nodes.append(helper.make_node(
                "ScatterDense", [resolve(op.inputs[0])], [names[op.output]], name=auto_name(op.path, "dense"),
                input_spatial_shape=spatial, format=layout, output_shape=[1, op.info["channels"], *spatial]))
    graph_outputs = []
    for out in outputs:
        scatter_op = next(op for op in ops if op.kind == "scatter" and op.output == out.scatter)
        current = scatter_out[out.scatter]
        shape = [1, scatter_op.info["channels"], *_flip(scatter_op.info["spatial_shape"], convert)]
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
