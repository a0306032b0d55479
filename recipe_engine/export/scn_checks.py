"""The checks a libspconv sparse ONNX file must pass (``/work/shared/scn-onnx-format.md``).

:func:`check_scn` runs on every ``onnx-sparse`` export before it is written, and on any file
given to it; it raises a :class:`RecipeError` listing every violation. Besides the format's
rules it checks the precision chain (no int8 layer reading an fp16 tensor, unless allowed; see
:mod:`.scn_precision`) and, when a compatibility profile is given, what that NVIDIA application
loads (:mod:`.scn_compat`). :func:`int8_fed_by_fp16` lists the chain's breaks in any file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import AttributeProto as A
from onnx import TensorProto

from ..recipe.errors import RecipeError
from .scn_compat import TRANSPOSE_DIMS, get_profile, profile_problems

NODE_TYPES = {"SparseConvolution", "Add", "QuantAdd", "Relu", "ScatterDense", "Reshape", "Transpose"}
PRECISIONS = {"int8", "fp16"}

CONV_ATTRS = {
    "activation": A.STRING, "kernel_size": A.INTS, "stride": A.INTS, "padding": A.INTS, "dilation": A.INTS,
    "subm": A.INT, "inverse": A.INT, "rulebook": A.STRING, "output_bound": A.INT, "precision": A.STRING,
    "output_precision": A.STRING,
}
CONV_OPTIONAL = {
    "input_dynamic_range": A.FLOAT, "weight_dynamic_ranges": A.FLOATS, "fixed_launch_points": A.INT,
    "ndim": A.INT, "input_spatial_shape": A.INTS, "output_spatial_shape": A.INTS, "in_channels": A.INT,
    "out_channels": A.INT, "transposed": A.INT, "output_padding": A.INTS, "groups": A.INT, "input_shape": A.INTS,
    "output_shape": A.INTS,
}
ADD_ATTRS = {"precision": A.STRING, "output_precision": A.STRING}
ADD_OPTIONAL = {"input0_dynamic_range": A.FLOAT, "input1_dynamic_range": A.FLOAT}
SCATTER_ATTRS = {"input_spatial_shape": A.INTS, "format": A.STRING, "output_shape": A.INTS}
SCATTER_OPTIONAL = {"input_dynamic_range": A.FLOAT, "output_layout": A.STRING}


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


class _Checker:
    def __init__(self, model: onnx.ModelProto, point_counts: Mapping[str, int] | None):
        self.model = model
        self.graph = model.graph
        self.counts = point_counts or {}
        self.errors: list[str] = []
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in self.graph.node for o in n.output}

    def error(self, node: onnx.NodeProto | None, message: str) -> None:
        where = f"{node.op_type} {node.name!r}: " if node is not None else ""
        self.errors.append(where + message)

    def typed(self, node: onnx.NodeProto, required: dict[str, int], optional: dict[str, int]) -> dict:
        found = {a.name: a for a in node.attribute}
        for name in required:
            if name not in found:
                self.error(node, f"attribute {name!r} is missing")
        for name, attr in found.items():
            kind = required.get(name, optional.get(name))
            if kind is None:
                self.error(node, f"unknown attribute {name!r}")
            elif attr.type != kind:
                self.error(node, f"attribute {name!r} has type {A.AttributeType.Name(attr.type)}, "
                                 f"expected {A.AttributeType.Name(kind)}")
        return attributes(node)

    def output_precision(self, name: str) -> str:
        """Precision of tensor ``name`` as its producer writes it (through Relu)."""
        node = self.producer.get(name)
        while node is not None and node.op_type == "Relu":
            node = self.producer.get(node.input[0])
        if node is None:
            return "fp16"  # the graph input
        return _text(attributes(node).get("output_precision", "fp16"))

    # -- the checks ---------------------------------------------------------------------------
    def run(self) -> list[str]:
        self.check_io_and_names()
        self.check_initializers()
        seen_rulebooks: dict[str, tuple] = {}
        for node in self.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in NODE_TYPES:
                self.error(node, f"node type {node.domain + '::' if node.domain else ''}{node.op_type} is not "
                                 f"read by libspconv (allowed: {', '.join(sorted(NODE_TYPES))})")
                continue
            getattr(self, f"check_{node.op_type.lower()}", lambda n: None)(node)
            if node.op_type == "SparseConvolution":
                self.check_rulebook(node, seen_rulebooks)
        return self.errors

    def check_io_and_names(self) -> None:
        graph = self.graph
        inputs = [i for i in graph.input if i.name not in self.inits]
        if len(inputs) != 1 or inputs[0].name != "0":
            self.error(None, f"the graph must have one input named '0', has {[i.name for i in inputs]}")
        for value in list(inputs) + list(graph.output):
            if value.type.tensor_type.elem_type != TensorProto.FLOAT16:
                self.error(None, f"graph input/output {value.name!r} is not FLOAT16")
        if inputs and len(inputs[0].type.tensor_type.shape.dim) != 2:
            self.error(None, "the graph input must be [N, C_in]")
        produced = [o for n in graph.node for o in n.output]
        names = ["0", *produced]
        if len(set(names)) != len(names):
            self.error(None, "tensor names are not unique")
        if names != [str(i) for i in range(len(names))]:
            self.error(None, "tensor names must be decimal strings in the order they are produced (0, 1, 2, ...)")
        node_names = [n.name for n in graph.node]
        if any(not n for n in node_names) or len(set(node_names)) != len(node_names):
            self.error(None, "node names must be non-empty and unique")
        init_names = [t.name for t in graph.initializer]
        if len(set(init_names)) != len(init_names):
            self.error(None, "initializer names are not unique (the runtime would load the first match)")
        known = set(names) | set(init_names)
        for node in graph.node:
            for name in node.input:
                if name not in known:
                    self.error(node, f"input {name!r} is not produced before it is used")

    def check_initializers(self) -> None:
        for tensor in self.graph.initializer:
            numel = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
            if tensor.data_type != TensorProto.FLOAT16:
                self.error(None, f"initializer {tensor.name!r} is not FLOAT16")
            elif not tensor.HasField("raw_data") or len(tensor.raw_data) != numel * 2:
                self.error(None, f"initializer {tensor.name!r} must hold numel*2 = {numel * 2} bytes of raw_data")

    def check_sparseconvolution(self, node: onnx.NodeProto) -> None:
        attrs = self.typed(node, CONV_ATTRS, CONV_OPTIONAL)
        if len(node.input) != 3 or not all(node.input):
            self.error(node, "needs inputs [x, weight, bias] (bias is required: use zeros)")
            return
        weight, bias = self.inits.get(node.input[1]), self.inits.get(node.input[2])
        if weight is None or bias is None:
            self.error(node, "weight and bias must be initializers")
            return
        if len(weight.dims) != 5:
            self.error(node, f"weight must be [O, k0, k1, k2, I], has dims {list(weight.dims)}")
            return
        out_channels = int(weight.dims[0])
        if list(weight.dims[1:4]) != list(attrs.get("kernel_size", [])):
            self.error(node, f"weight kernel dims {list(weight.dims[1:4])} != kernel_size {attrs.get('kernel_size')}")
        if list(bias.dims) != [out_channels]:
            self.error(node, f"bias dims {list(bias.dims)} != [{out_channels}]")
        for key in ("kernel_size", "stride", "padding", "dilation"):
            if key in attrs and len(attrs[key]) != 3:
                self.error(node, f"{key} needs 3 values")
        activation = _text(attrs.get("activation", ""))
        if activation not in ("ReLU", "None"):
            self.error(node, f"activation {activation!r} has no libspconv kernel (ReLU or None)")
        precision = self.check_precisions(node, attrs)
        ranges = attrs.get("weight_dynamic_ranges")
        int8 = precision == "int8"  # fp16 layers may carry their calibrated ranges too (NVIDIA writes them)
        if int8 or "input_dynamic_range" in attrs:
            if not _positive(attrs.get("input_dynamic_range")):
                self.error(node, f"{precision} layer needs a finite input_dynamic_range > 0, "
                                 f"has {attrs.get('input_dynamic_range')}")
        if int8 or ranges is not None:
            if ranges is None or len(ranges) != out_channels:
                self.error(node, f"weight_dynamic_ranges has {0 if ranges is None else len(ranges)} values, "
                                 f"expected O = {out_channels}")
            elif not all(_positive(float(r)) for r in ranges):
                self.error(node, "weight_dynamic_ranges must be finite and > 0 (NaN/inf/zero amax)")
        bound = attrs.get("output_bound", 0)
        if not isinstance(bound, int) or bound <= 0:
            self.error(node, f"output_bound must be a positive INT, has {bound}")
        elif node.name in self.counts and bound < self.counts[node.name]:
            self.error(node, f"output_bound {bound} is below the {self.counts[node.name]} points this layer "
                             "produced in calibration")
        if attrs.get("inverse") and not _text(attrs.get("rulebook", "")):
            self.error(node, "an inverse conv needs the rulebook of its downsampling conv")

    def check_rulebook(self, node: onnx.NodeProto, seen: dict[str, tuple]) -> None:
        attrs = attributes(node)
        key = _text(attrs.get("rulebook", ""))
        if not key:
            return
        geometry = tuple(tuple(attrs.get(k, [])) for k in ("kernel_size", "stride", "padding", "dilation")) + \
            (attrs.get("subm", 0),)
        if attrs.get("inverse"):
            if key not in seen:
                self.error(node, f"inverse conv uses rulebook {key!r} before any conv created it")
            return
        if key in seen and seen[key] != geometry:
            self.error(node, f"rulebook {key!r} is shared by convs of different geometry {seen[key]} vs {geometry}")
        seen.setdefault(key, geometry)

    def check_precisions(self, node: onnx.NodeProto, attrs: dict) -> str:
        precision = _text(attrs.get("precision", ""))
        out_precision = _text(attrs.get("output_precision", ""))
        for key, value in (("precision", precision), ("output_precision", out_precision)):
            if value not in PRECISIONS:
                self.error(node, f"{key} {value!r} is not 'int8' or 'fp16'")
        return precision

    def check_add(self, node: onnx.NodeProto) -> None:
        attrs = self.typed(node, ADD_ATTRS, ADD_OPTIONAL)
        if len(node.input) != 2:
            self.error(node, "needs two inputs")
            return
        precision = self.check_precisions(node, attrs)
        left, right = (self.output_precision(n) for n in node.input)
        if left != right:
            self.error(node, f"its inputs have different precisions ({node.input[0]}: {left}, "
                             f"{node.input[1]}: {right}): the producers' output_precision must match")
        ranges = [attrs.get("input0_dynamic_range"), attrs.get("input1_dynamic_range")]
        if (precision == "int8" or any(r is not None for r in ranges)) and not all(_positive(r) for r in ranges):
            self.error(node, f"{precision} Add needs finite input dynamic ranges > 0, has {ranges}")

    check_quantadd = check_add

    def check_relu(self, node: onnx.NodeProto) -> None:
        if len(node.input) != 1 or node.attribute:
            self.error(node, "Relu takes one input and no attributes")

    def check_scatterdense(self, node: onnx.NodeProto) -> None:
        attrs = self.typed(node, SCATTER_ATTRS, SCATTER_OPTIONAL)
        if _text(attrs.get("format", "")) not in TRANSPOSE_DIMS:
            self.error(node, f"format {attrs.get('format')!r} is not 'xyz' or 'zyx'")
        if len(attrs.get("input_spatial_shape", [])) != 3 or len(attrs.get("output_shape", [])) != 5:
            self.error(node, "input_spatial_shape needs 3 values and output_shape 5")
        if len(node.input) != 1:
            self.error(node, "needs one input")
        elif self.output_precision(node.input[0]) != "fp16":
            producer = self.producer.get(node.input[0])
            self.error(node, f"its input {node.input[0]} is produced in int8 by "
                             f"{producer.name if producer is not None else '?'}: the producer of ScatterDense "
                             "must have output_precision='fp16'")

    def check_transpose(self, node: onnx.NodeProto) -> None:
        attrs = self.typed(node, {"dims": A.INTS}, {})
        producer = self.producer.get(node.input[0]) if node.input else None
        if producer is None or producer.op_type != "ScatterDense":
            self.error(node, "Transpose is only supported directly after ScatterDense")
            return
        fmt = _text(attributes(producer).get("format", ""))
        if list(attrs.get("dims", [])) != TRANSPOSE_DIMS.get(fmt):
            self.error(node, f"dims {attrs.get('dims')} is not {TRANSPOSE_DIMS.get(fmt)} (the only Transpose "
                             f"after a {fmt!r} ScatterDense)")

    def check_reshape(self, node: onnx.NodeProto) -> None:
        attrs = self.typed(node, {"dims": A.INTS}, {})
        if list(attrs.get("dims", [])).count(-1) > 1:
            self.error(node, "Reshape dims may hold at most one -1")


def int8_fed_by_fp16(model: onnx.ModelProto) -> list[str]:
    """Names of the int8 layers (SparseConvolution, Add) that read a tensor stored in fp16."""
    checker = _Checker(model, None)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("SparseConvolution", "Add", "QuantAdd"):
            continue
        if _text(attributes(node).get("precision", "")) != "int8":
            continue
        data = node.input[:1] if node.op_type == "SparseConvolution" else node.input
        if any(checker.output_precision(name) != "int8" for name in data):
            found.append(node.name)
    return found


def check_scn(model: onnx.ModelProto, point_counts: Mapping[str, int] | None = None, what: str = "onnx-sparse",
              *, allow_fp16_to_int8: bool = False, compat: str | None = None) -> None:
    """Raise RecipeError listing every way ``model`` violates the libspconv format.

    ``point_counts`` (conv node name -> most points seen in calibration) enables the output_bound check;
    ``allow_fp16_to_int8`` accepts int8 layers that read fp16; ``compat`` names a profile of
    :mod:`.scn_compat` whose application's requirements are checked too.
    """
    errors = _Checker(model, point_counts).run()
    breaks = int8_fed_by_fp16(model)
    if breaks and not allow_fp16_to_int8:
        errors.append(f"{len(breaks)} int8 layer(s) read fp16 tensors (every int8 layer must be fed int8 by its "
                      f"producer): {', '.join(breaks)}")
    profile = get_profile(compat)
    if profile is not None:
        errors += profile_problems(model, profile, breaks)
    if errors:
        shown = "\n  - ".join(errors[:12])
        more = f"\n  (+{len(errors) - 12} more)" if len(errors) > 12 else ""
        raise RecipeError(f"{what}: the sparse ONNX file breaks {len(errors)} libspconv format rule(s):\n  - "
                          f"{shown}{more}")
