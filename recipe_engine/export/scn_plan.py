"""``onnx-sparse`` planning: what each traced conv and Add becomes in the libspconv file.

- :func:`plan_conv`: geometry (reversed when the file's layout differs from the model's), FP16-ready
  weights in ``[O, k.., I]``, int8 or fp16 precision and dynamic ranges of one conv;
- :func:`plan_adds`: precision and ranges of every Add (int8 when its op-site quantizer is enabled);
- :func:`fold_relus`: Relu folded into the conv that feeds it when nothing else reads the conv;
- :func:`assign_precisions`: every layer's ``output_precision`` by :mod:`.scn_precision`;
- :func:`check_output_bound`: the deployment capacity against the points seen in calibration;
- :func:`check_rulebooks`: convs sharing an ``indice_key`` see the same coordinates and geometry.

:mod:`.scn_write` writes the graph from these plans; :mod:`.onnx_sparse` drives both.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..quant import backend, sparse
from ..recipe.errors import RecipeError
from . import scn_precision
from .quantizers import amax_problem
from .sparse_trace import Op, SparseTrace

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


def flip(values: list[int], convert: bool) -> list[int]:
    return list(reversed(values)) if convert else list(values)


def quantizer_names(names_of: dict[int, list[str]], quantizer: Any) -> str:
    return " = ".join(names_of.get(id(quantizer), [])) or "<unnamed quantizer>"


def check_int8_quantizer(quantizer: Any, label: str, per_channel: int | None = None, axis: int = 0) -> None:
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
        "input_spatial_shape": flip(op.info["in_spatial"], convert),
        "output_spatial_shape": flip(op.info["out_spatial"], convert),
        "in_channels": in_c, "out_channels": out_c,
        "kernel_size": flip(list(module.kernel_size), convert),
        "dilation": flip(list(module.dilation), convert),
        "padding": flip(list(module.padding), convert),
        "stride": flip(list(module.stride), convert),
        "output_padding": flip(list(module.output_padding), convert),
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
        check_int8_quantizer(input_q, quantizer_names(names_of, input_q))
        check_int8_quantizer(weight_q, quantizer_names(names_of, weight_q), per_channel=out_c,
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
def fold_relus(trace: SparseTrace, convs: dict[int, ConvPlan]) -> tuple[list[Op], dict[int, int]]:
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
def assign_precisions(ops: list[Op], convs: dict[int, ConvPlan], adds: dict[int, dict], alias: dict[int, int],
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


def calibrated(quantizer: Any) -> float | None:
    """The calibrated per-tensor amax of a (possibly disabled) quantizer, or None."""
    if quantizer is None or amax_problem(quantizer) is not None:
        return None
    amax = backend.get_amax(quantizer)
    return float(amax.reshape(-1)[0]) if amax.numel() == 1 else None


def fp16_ranges(plan: ConvPlan) -> None:
    """Ranges of an fp16 conv whose input quantizer was calibrated, written as NVIDIA writes them on every layer.

    The weight's are its per-output-channel max |W| (what the max weight calibrator gives), taken on the weight
    written to the file: a layer folded at export (``phase: before_export``) changed after calibration.
    """
    plan.input_range = calibrated(getattr(plan.op.module, "input_quantizer", None))
    if plan.input_range is None or getattr(plan.op.module, "weight_quantizer", None) is None:
        plan.input_range = None
        return
    ranges = plan.weight.abs().reshape(plan.weight.shape[0], -1).amax(dim=1)
    if bool((ranges > 0).all()) and bool(torch.isfinite(ranges).all()):
        plan.weight_ranges = [float(r) for r in ranges]


def plan_adds(ops: list[Op], names_of: dict[int, list[str]]) -> dict[int, dict]:
    """Per Add op (by id): its name, precision (int8 when both op-site quantizers are enabled) and ranges."""
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
                    check_int8_quantizer(q, quantizer_names(names_of, q))
                info["precision"] = "int8"
                info["ranges"] = [float(backend.get_amax(q).reshape(-1)[0]) for q in quantizers]
            else:  # fp16: its calibrated ranges, when both inputs have one
                ranges = [calibrated(q) for q in quantizers]
                if all(r is not None for r in ranges):
                    info["ranges"] = ranges
            adds[id(op)] = info
    return adds


def check_output_bound(convs: dict[int, ConvPlan], point_counts: dict[str, int], input_points: int,
                       fixed_bound: int | None, headroom: float, notes: list[str]) -> tuple[dict[str, int], int, int]:
    """``(points per conv, largest count, bound)``: an error when calibration produced more points than the
    bound, a note and a warning when it came within ``headroom`` of it."""
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
        warnings.warn(f"onnx-sparse: {message}", stacklevel=3)

    return counts, largest, bound


def check_rulebooks(conv_ops: list[Op], convs: dict[int, ConvPlan]) -> None:
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
