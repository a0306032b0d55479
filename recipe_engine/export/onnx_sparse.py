"""``onnx-sparse``: a traced spconv module written in NVIDIA libspconv's sparse ONNX format.

From a :class:`~.sparse_trace.SparseTrace` this module
- folds ``Relu`` into the conv that feeds it (``activation="ReLU"``) when nothing else reads
  the conv's output, and drops a Relu after a conv that already applies ReLU;
- converts the coordinate order when the file's ``layout`` differs from the model's
  (``source_layout``): kernel axes of every weight and kernel/stride/padding/dilation/
  output_padding and spatial shapes are reversed; the runtime then gets indices with columns 1
  and 3 swapped;
- decides precisions: a conv is ``int8`` when its input and weight quantizers are both enabled,
  an Add when its op-site quantizer is; ``output_precision`` follows :mod:`.scn_precision` (int8
  when every reader is int8 through one quantizer); an int8 layer that would read fp16 is an
  error unless ``allow_fp16_to_int8``. Calibrated ranges are written on fp16 layers too, as
  NVIDIA's exporters do;
- sets ``output_bound`` (a deployment capacity, 200000 unless the recipe says otherwise): an
  error when calibration produced more points, a warning and a note when it came within
  ``output_bound_headroom`` of it;
- writes tensors named "0", "1", ... in production order, FP16 ``raw_data`` initializers
  ``spconv{k}.weight`` / ``spconv{k}.bias`` (zero bias when the conv has none), and the
  ScatterDense / Transpose / Reshape tail of each output: the model's own arrangement, or the
  one a compatibility profile's application reads (:mod:`.scn_compat`).

The batch axis is 1 in ``output_shape`` and in Reshape ``dims``: libspconv runs one sample.
(A little over 400 lines: conv planning, checks and emission share :class:`ConvPlan`; the tails
live in :mod:`.scn_tail` and the precision chain in :mod:`.scn_precision`.)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..quant import backend, sparse
from ..recipe.errors import RecipeError
from . import scn_precision
from .quantizers import amax_problem
from .scn_checks import check_scn
from .scn_compat import get_profile
from .scn_tail import REVERSE, OutputPlan, plan_output
from .sparse_trace import Op, SparseTrace

__all__ = ["REVERSE", "ConvPlan", "OutputPlan", "SparseExport", "build_scn", "plan_conv", "plan_output"]
DEFAULT_OUTPUT_BOUND = 200000  # NVIDIA's exporters write 200000; libspconv's parser default is 150000


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


def _check_int8_quantizer(quantizer: Any, label: str, per_channel: int | None = None, axis: int = 0) -> None:
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
        if amax.numel() > 1 and quantizer.axis not in (axis, (axis,)):
            layout = "[I, O] matrix of a 1x1 spconv layer" if axis == 1 else "[O, k.., I] weight"
            raise RecipeError(f"onnx-sparse: weight quantizer {label} quantizes axis {quantizer.axis}; the "
                              f"{layout} needs per-output-channel axis {axis}", hint="use per_channel: true")


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
    if tuple(module.weight.shape) != (out_c, *module.kernel_size, in_c):
        raise RecipeError(f"onnx-sparse: {op.path} weight has shape {tuple(module.weight.shape)}, expected spconv "
                          f"2.x [O, k0, k1, k2, I] = {(out_c, *module.kernel_size, in_c)}")
    # the file's [O, k.., I] computes what PyTorch computed (spconv's 1x1 layers read weight.view(I, O))
    weight = sparse.kernel_weight(module, module.weight.detach()).float().cpu()
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
        _check_int8_quantizer(weight_q, _quantizer_names(names_of, weight_q), per_channel=out_c,
                              axis=sparse.weight_channel_axis(module))
        plan.precision = "int8"
        with torch.no_grad():  # store the weight PyTorch computes with: FP16 rounding cannot move its int8 grid
            quantized = sparse.kernel_weight(module, sparse.quantize_weight(module, weight_q)).detach().float().cpu()
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


# ----------------------------------------------------------------------------- precisions
def _assign_precisions(ops: list[Op], convs: dict[int, ConvPlan], adds: dict[int, dict], alias: dict[int, int],
                       names_of: dict[int, list[str]], classes: dict[str, type], allow_fp16_to_int8: bool,
                       notes: list[str]) -> None:
    """Set every conv's and Add's ``output_precision`` by :mod:`.scn_precision`; fail on a broken chain."""
    layers: dict[int, scn_precision.Layer] = {}
    for op in ops:
        if op.kind == "conv":
            plan = convs[id(op)]
            quantizer = getattr(op.module, "input_quantizer", None) if plan.precision == "int8" else None
            layers[id(op)] = scn_precision.Layer(op, plan.name, plan.precision, [quantizer])
        elif op.kind == "add":
            info = adds[id(op)]
            quantizers = list(op.info["quantizers"]) if info["precision"] == "int8" else [None, None]
            layers[id(op)] = scn_precision.Layer(op, info["name"], info["precision"], quantizers)
    chain = scn_precision.assign(ops, layers, alias, names_of)
    if chain.breaks and not allow_fp16_to_int8:
        raise scn_precision.chain_error(chain, classes)
    notes += chain.notes + scn_precision.break_notes(chain)
    for op in ops:
        if op.kind == "conv":
            convs[id(op)].output_precision = chain.output[id(op)]
        elif op.kind == "add":
            adds[id(op)]["output_precision"] = chain.output[id(op)]


def _calibrated(quantizer: Any) -> float | None:
    """The calibrated per-tensor amax of a (possibly disabled) quantizer, or None."""
    if quantizer is None or amax_problem(quantizer) is not None:
        return None
    amax = backend.get_amax(quantizer)
    return float(amax.reshape(-1)[0]) if amax.numel() == 1 else None


def _fp16_ranges(plan: ConvPlan) -> None:
    """Ranges of an fp16 conv whose input quantizer was calibrated, written as NVIDIA writes them on every layer.

    The weight's are its per-output-channel max |W| (what the max weight calibrator gives), taken on the weight
    written to the file: a layer folded at export (``phase: before_export``) changed after calibration.
    """
    plan.input_range = _calibrated(getattr(plan.op.module, "input_quantizer", None))
    if plan.input_range is None or getattr(plan.op.module, "weight_quantizer", None) is None:
        plan.input_range = None
        return
    ranges = plan.weight.abs().reshape(plan.weight.shape[0], -1).amax(dim=1)
    if bool((ranges > 0).all()) and bool(torch.isfinite(ranges).all()):
        plan.weight_ranges = [float(r) for r in ranges]


# ----------------------------------------------------------------------------- emission
def _fp16_initializer(name: str, tensor: torch.Tensor) -> onnx.TensorProto:
    array = tensor.detach().cpu().float().numpy().astype(np.float16)
    proto = numpy_helper.from_array(array, name)
    if not proto.HasField("raw_data"):  # numpy_helper writes raw_data; make sure
        proto = helper.make_tensor(name, TensorProto.FLOAT16, array.shape, array.tobytes(), raw=True)
    return proto


def build_scn(trace: SparseTrace, *, layout: str, source_layout: str, headroom: float,
              fixed_bound: int | None, point_counts: dict[str, int], input_points: int,
              names_of: dict[int, list[str]], allow_fp16_to_int8: bool = False,
              compat: str | None = None) -> SparseExport:
    """Turn ``trace`` into a checked libspconv ModelProto (``compat``: a profile of :mod:`.scn_compat`)."""
    convert = layout != source_layout
    profile = get_profile(compat)
    if profile is not None and layout not in profile.layouts:
        raise RecipeError(f"onnx-sparse: {profile.application} indexes voxels as {' or '.join(profile.layouts)}, "
                          f"this export's layout is {layout!r}", hint=f"set layout: {profile.layouts[0]}")
    notes: list[str] = []
    convs: dict[int, ConvPlan] = {}
    conv_ops = [op for op in trace.ops if op.kind == "conv"]
    for op in conv_ops:
        plan = plan_conv(op, convert, names_of)
        if plan.note:
            notes.append(plan.note)
        if plan.precision == "fp16":
            _fp16_ranges(plan)
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
            else:  # fp16: its calibrated ranges, when both inputs have one
                ranges = [_calibrated(q) for q in quantizers]
                if all(r is not None for r in ranges):
                    info["ranges"] = ranges
            adds[id(op)] = info
    _assign_precisions(ops, convs, adds, alias, names_of, trace.module_classes, allow_fp16_to_int8, notes)

    # output_bound: a deployment capacity (never sized from the calibration set); calibration must fit in it
    counts = {plan.name: max(point_counts.get(plan.op.path, 0), plan.op.info["out_points"]) for plan in convs.values()}
    largest = max([input_points, *counts.values()])
    bound = fixed_bound if fixed_bound is not None else DEFAULT_OUTPUT_BOUND
    low = {name: c for name, c in {"the input": input_points, **counts}.items() if c > bound}
    if low:
        name, count = max(low.items(), key=lambda kv: kv[1])
        raise RecipeError(f"onnx-sparse: output_bound {bound} is below the {count} points {name} produced in "
                          f"calibration ({len(low)} layer(s) affected)",
                          hint=f"raise output_bound to at least {math.ceil(count * headroom)} (points x "
                          f"output_bound_headroom {headroom:g}); deployment frames may be larger still")
    if largest * headroom > bound:
        message = (f"output_bound {bound}: calibration reached {largest} points ({largest / bound:.0%} of it), "
                   f"within the headroom of {headroom:g}x; real frames may overflow it (raise output_bound)")
        notes.append(message)
        warnings.warn(f"onnx-sparse: {message}", stacklevel=2)

    if profile is not None and len(trace.outputs) != 1:
        raise RecipeError(f"onnx-sparse: {profile.application} reads one output; {len(trace.outputs)} outputs are "
                          "traced", hint="export a module with one dense output, or set compat: none")
    outputs = [plan_output(trace, v, layout, convert, profile) for v in trace.outputs]
    if profile is not None and not all(o.exact for o in outputs):
        letters = dict(zip(("s0", "s1", "s2"), source_layout, strict=True))
        axes = ",".join(letters.get(a, a) for a in outputs[0].axes)
        notes.append(f"compat {profile.name}: the file's BEV map is {profile.bev} (axes {axes} of the model's grid) "
                     f"as {profile.application} reads it; the model's own output is arranged otherwise, so a dense "
                     "part exported from this model takes the other arrangement")
    model = _emit(trace, ops, alias, convs, adds, outputs, layout, convert, bound)
    check_scn(model, counts, allow_fp16_to_int8=allow_fp16_to_int8, compat=compat)
    int8_convs = sum(1 for p in convs.values() if p.precision == "int8")
    summary = {"convs": len(convs), "int8_convs": int8_convs, "fp16_convs": len(convs) - int8_convs,
               "adds": len(adds), "int8_adds": sum(1 for a in adds.values() if a["precision"] == "int8"),
               "relus": sum(1 for op in ops if op.kind == "relu"), "output_bound": bound,
               "max_points": largest, "output_bound_used": round(largest / bound, 4), "layout": layout, "source_layout": source_layout,
               "compat": profile.name if profile is not None else "none",
               "fp16_with_ranges": sum(1 for p in convs.values() if p.precision == "fp16" and p.input_range is not None)
               + sum(1 for a in adds.values() if a["precision"] == "fp16" and a["ranges"][0] is not None)}
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
