"""``onnx-qdq`` with ``target: onnxruntime``: the Q/DQ graph placed for onnxruntime's CPU provider.

The TensorRT placement (:mod:`.onnx_qdq`: Q/DQ on layer inputs and weights, ``Conv -> Relu -> Q``)
leaves onnxruntime's CPU provider running float convolutions between extra Q/DQ nodes (slower than
FP32). Its graph optimiser builds integer kernels (``QLinearConv``, ``QLinearAdd``,
``QLinearConcat``) from ``DQ -> op -> Q`` groups with integer weights and biases, and removes a
``Relu`` in front of a ``Q`` whose zero point is the type's minimum. This module rewrites the
engine's own Q/DQ export (same calibrated amax, same weights) into that form:

1. **One Q per tensor.** A tensor read by several quantizers with different scales (a block input
   feeding a conv and a residual add) gets the widest one when the ranges are within 2x of each other
   (the uint8 step below is then still no coarser than each int8 step); a ``Relu`` can then be removed.
2. **Q moved above MaxPool and Flatten** (they commute with a per-tensor quantizer): ``Add -> Relu ->
   MaxPool -> Q`` becomes an integer add and an integer max-pool.
3. **Unsigned activations.** Tensors that cannot be negative (``Relu`` outputs, and max-pool/concat/
   reshape of them) are uint8 with zero point 0 and scale ``amax / 255`` (the step the engine's int8
   ``amax / 127`` spends half of on negatives it never sees); other activations are uint8 with zero point
   128 and the engine's scale, which is the int8 symmetric grid exactly. onnxruntime's x86 kernels
   prefer uint8 activations with int8 weights.
4. **ConvTranspose with kernel == stride** (upsampling deblocks) becomes a 1x1 ``Conv`` and a
   ``DepthToSpace`` (exact: every output pixel has one contribution), since onnxruntime's CPU provider
   has no integer transposed convolution.
5. **Integer weights and biases.** Per-channel int8 weights are stored quantized (as ONNX
   ``QuantizeLinear`` rounds them), biases as int32 with scale ``input scale x weight scale``. A layer
   whose output has no range (a graph output) stays a float op with its weights stored dequantized (the
   same numbers, pre-packed by onnxruntime instead of dequantized on every call).

Before these, thin layers (a one- or three-channel stem, a 9-feature Linear) are placed by :mod:`.ort_thin`:
kept float where onnxruntime runs them faster in float, otherwise given padded input channels. The
result is checked with ``onnx.checker``; verification and the count of the integer kernels onnxruntime
built are in :mod:`.ort_verify`; the graph index the rewrites share is :mod:`.ort_graph`.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import onnx
from onnx import helper

from ..recipe.errors import RecipeError
from . import ort_thin
from .ort_graph import (
    OrtGraph,
    amax_of,
    attr_of,
    axis_of,
    dequantizers,
    is_activation_q,
    output_quantized,
    set_params,
)

#: Ops through which a tensor stays non-negative when its inputs are.
_KEEPS_SIGN = {"MaxPool", "Flatten", "Reshape", "Concat", "Transpose", "DepthToSpace", "Squeeze", "Unsqueeze",
               "GlobalAveragePool", "AveragePool"}
#: Widest/narrowest amax ratio up to which the quantizers of one tensor are merged.
MERGE_RATIO = 2.0


# ----------------------------------------------------------------------------- 1. one Q per tensor
def merge_tensor_quantizers(graph: OrtGraph) -> int:
    """Give the Q nodes of one tensor the widest scale among them (ranges within MERGE_RATIO); returns merges."""
    merged = 0
    for name in list(graph.consumers):
        qs = [n for n in graph.consumers.get(name, []) if is_activation_q(graph, n)]
        if len(qs) < 2 or len({graph.array(q.input[2]).dtype for q in qs}) > 1:
            continue
        amaxes = [amax_of(graph, q) for q in qs]
        if max(amaxes) > MERGE_RATIO * min(amaxes):
            continue
        widest = qs[int(np.argmax(amaxes))]
        for q in qs:
            if q is widest:
                continue
            for dq in dequantizers(graph, q):
                for reader in graph.consumers.get(dq.output[0], []):
                    for i, inp in enumerate(reader.input):
                        if inp == dq.output[0]:
                            reader.input[i] = dequantizers(graph, widest)[0].output[0]
            graph.g.node.remove(q)
            for dq in dequantizers(graph, q):
                graph.g.node.remove(dq)
            merged += 1
        graph.refresh()
    return merged


# ----------------------------------------------------------------------------- 2. Q above MaxPool / Flatten
#: Ops that commute with a per-tensor quantizer (max of quantized = quantized max; reshapes move values).
_COMMUTES = {"MaxPool", "Flatten"}


def hoist_over_commuting(graph: OrtGraph, keep: frozenset[str] | set[str] = frozenset()) -> int:
    """``x -> MaxPool|Flatten -> Q`` (one Q reads the op) becomes ``x -> Q -> DQ -> op -> Q`` (same params);
    not for the ops named in ``keep`` (a float stem's pool, :mod:`.ort_thin`)."""
    moved = 0
    changed = True
    while changed:  # a chain (GlobalAveragePool -> Flatten -> Q) moves one op per pass
        changed = False
        for op in [n for n in graph.g.node if n.op_type in _COMMUTES and n.name not in keep]:
            readers = graph.consumers.get(op.output[0], [])
            if len(readers) != 1 or not is_activation_q(graph, readers[0]):
                continue
            source = graph.producer.get(op.input[0])
            if source is not None and source.op_type == "DequantizeLinear":
                continue
            q = readers[0]
            q_out, dq_out = graph.fresh(op.input[0] + "_q"), graph.fresh(op.input[0] + "_dq")
            index = list(graph.g.node).index(op)
            graph.g.node.insert(index, helper.make_node("DequantizeLinear", [q_out, q.input[1], q.input[2]],
                                                        [dq_out]))
            graph.g.node.insert(index, helper.make_node("QuantizeLinear", [op.input[0], q.input[1], q.input[2]],
                                                        [q_out]))
            op.input[0] = dq_out
            moved += 1
            changed = True
            graph.refresh()
    return moved


# ----------------------------------------------------------------------------- 3. unsigned activations
def _non_negative(graph: OrtGraph, name: str, depth: int = 0) -> bool:
    node = graph.producer.get(name)
    if node is None or depth > 32:
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type == "DequantizeLinear":
        zp = graph.array(node.input[2]) if len(node.input) > 2 and node.input[2] in graph.inits else None
        return zp is not None and zp.dtype == np.uint8 and int(zp.max()) == 0
    if node.op_type == "QuantizeLinear":
        return _non_negative(graph, node.input[0], depth + 1)
    if node.op_type in _KEEPS_SIGN:
        data = [i for i in node.input[:1 if node.op_type != "Concat" else None] if i not in graph.inits]
        return bool(data) and all(_non_negative(graph, i, depth + 1) for i in data)
    return False


def to_unsigned(graph: OrtGraph) -> dict[str, int]:
    """int8 activation Q/DQ -> uint8: zero point 0 and amax/255 when non-negative, else 128 and the same scale."""
    counts = Counter()
    params: dict[tuple, tuple[str, str]] = {}
    for q in [n for n in graph.g.node if is_activation_q(graph, n)]:
        if graph.array(q.input[2]).dtype != np.int8:
            continue
        amax = amax_of(graph, q)
        unsigned = _non_negative(graph, q.input[0])
        scale = np.float32(amax / 255.0) if unsigned else graph.array(q.input[1]).astype(np.float32)
        key = (float(scale), unsigned)
        if key not in params:
            params[key] = (graph.constant("act_scale", np.array(scale, np.float32)),
                           graph.constant("act_zero_point", np.array(0 if unsigned else 128, np.uint8)))
        set_params(graph, q, *params[key])
        counts["uint8_zero_point_0" if unsigned else "uint8_zero_point_128"] += 1
    return dict(counts)


# ----------------------------------------------------------------------------- 4. ConvTranspose -> Conv + DepthToSpace
def _weight_dq(graph: OrtGraph, name: str) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    dq = graph.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = graph.producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in graph.inits:
        return None
    return q, dq


def upsampling_as_depth_to_space(graph: OrtGraph) -> int:
    """ConvTranspose (kernel == stride, no padding, one group) followed by Relu -> Q: 1x1 Conv + DepthToSpace."""
    done = 0
    for node in [n for n in graph.g.node if n.op_type == "ConvTranspose"]:
        kernel, strides = list(attr_of(node, "kernel_shape", [])), list(attr_of(node, "strides", []))
        pads = list(attr_of(node, "pads", [0] * 2 * len(kernel)))
        weights = _weight_dq(graph, node.input[1])
        relu = graph.consumers.get(node.output[0], [])
        if (len(kernel) != 2 or kernel != strides or kernel[0] != kernel[1] or any(pads) or attr_of(node, "group", 1) != 1
                or list(attr_of(node, "dilations", [1, 1])) != [1, 1] or attr_of(node, "output_padding") or weights is None
                or len(relu) != 1 or relu[0].op_type != "Relu"):
            continue
        quantizers = graph.consumers.get(relu[0].output[0], [])
        if len(quantizers) != 1 or not is_activation_q(graph, quantizers[0]):
            continue
        q_w, dq_w = weights
        b = kernel[0]
        w = graph.array(q_w.input[0])  # [Cin, Cout, b, b]
        scale, zero = graph.array(q_w.input[1]), graph.array(q_w.input[2])
        c_in, c_out = w.shape[0], w.shape[1]
        w1 = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(c_out * b * b, c_in, 1, 1))
        per_channel = scale.size > 1
        if per_channel and axis_of(q_w) != 1:
            continue
        if per_channel:
            scale, zero = np.repeat(scale, b * b), np.repeat(zero, b * b)
        w_name, s_name, z_name = (graph.constant("w_d2s", w1), graph.constant("w_d2s_scale", scale),
                                  graph.constant("w_d2s_zp", zero))
        q_w.input[:] = [w_name, s_name, z_name]
        dq_w.input[1], dq_w.input[2] = s_name, z_name
        for n in (q_w, dq_w):
            for a in list(n.attribute):
                if a.name == "axis":
                    n.attribute.remove(a)
            if per_channel:
                n.attribute.append(helper.make_attribute("axis", 0))
        inputs = list(node.input[:2])
        if len(node.input) > 2 and node.input[2]:
            inputs.append(graph.constant("bias_d2s", np.repeat(graph.array(node.input[2]), b * b)))
        conv = helper.make_node("Conv", inputs, [node.output[0]], kernel_shape=[1, 1], name=node.name + "_1x1")
        index = list(graph.g.node).index(node)
        graph.g.node.remove(node)
        graph.g.node.insert(index, conv)
        # Relu commutes with DepthToSpace: Conv -> Relu -> Q -> DQ -> DepthToSpace -> Q -> DQ -> readers
        q = quantizers[0]
        dq = dequantizers(graph, q)
        if len(dq) != 1:
            raise RecipeError("onnx-qdq (onnxruntime): unexpected Q without one DequantizeLinear")
        readers_of = dq[0].output[0]
        d2s, q2, dq2 = graph.fresh("d2s"), graph.fresh("d2s_q"), graph.fresh("d2s_dq")
        for reader in graph.consumers.get(readers_of, []):
            for i, inp in enumerate(reader.input):
                if inp == readers_of:
                    reader.input[i] = dq2
        graph.g.node.extend([
            helper.make_node("DepthToSpace", [readers_of], [d2s], blocksize=b, mode="CRD"),
            helper.make_node("QuantizeLinear", [d2s, q.input[1], q.input[2]], [q2]),
            helper.make_node("DequantizeLinear", [q2, q.input[1], q.input[2]], [dq2]),
        ])
        done += 1
        graph.refresh()
    return done


# ----------------------------------------------------------------------------- 5. integer weights and biases
def integer_weights(graph: OrtGraph) -> int:
    """``Q(float weight) -> DQ`` becomes an int8 initializer -> DQ (rounded half to even, as QuantizeLinear)."""
    count = 0
    for q in [n for n in graph.g.node if n.op_type == "QuantizeLinear" and n.input[0] in graph.inits]:
        w, scale, zero = graph.array(q.input[0]), graph.array(q.input[1]), graph.array(q.input[2])
        shape = [1] * w.ndim
        if scale.size > 1:
            shape[axis_of(q)] = scale.size
        info = np.iinfo(zero.dtype)
        quantized = np.clip(np.rint(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.int64), info.min,
                            info.max).astype(zero.dtype)
        name = graph.constant(q.input[0] + "_quantized", quantized)
        for dq in dequantizers(graph, q):
            dq.input[0] = name
        graph.g.node.remove(q)
        count += 1
    graph.refresh()
    return count


def float_weights_of_float_ops(graph: OrtGraph) -> int:
    """Layers with a float output (no range for it: a graph output) run as float ops in onnxruntime; their
    weights become the dequantized values as float constants (identical numbers), which onnxruntime
    pre-packs, instead of a DequantizeLinear it runs on every call (measured: the zoo CenterPoint head's last
    conv 1.8 -> 1.2 ms; ``ConvInteger`` + scale, the integer alternative, took 4.7 ms). Biases stay float."""
    count = 0
    for node in [n for n in graph.g.node if n.op_type in ("Conv", "ConvTranspose")]:  # QGemm has float outputs
        dq = graph.producer.get(node.input[1])
        if output_quantized(graph, node) or dq is None or dq.op_type != "DequantizeLinear" or \
                dq.input[0] not in graph.inits:
            continue
        _dequantized_weight(graph, node, dq)
        count += 1
    graph.refresh()
    return count


def _dequantized_weight(graph: OrtGraph, node: onnx.NodeProto, dq: onnx.NodeProto) -> None:
    """``node`` reads its weight as float constants (the dequantized values, identical numbers)."""
    q, scale = graph.array(dq.input[0]), graph.array(dq.input[1])
    zero = graph.array(dq.input[2]) if len(dq.input) > 2 else np.zeros_like(scale, dtype=q.dtype)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis_of(dq)] = scale.size
    values = ((q.astype(np.int32) - zero.reshape(shape).astype(np.int32)).astype(np.float32)
              * scale.reshape(shape).astype(np.float32))
    node.input[1] = graph.constant("float_weight", values.astype(np.float32))
    if all(reader is node for reader in graph.consumers.get(dq.output[0], [])):
        graph.g.node.remove(dq)  # read by nothing else now: onnxruntime would still run it on every call


def quantize_outputs(graph: OrtGraph, ranges: dict[str, tuple[float, float]]) -> int:
    """Opt-in (``place_for_onnxruntime(output_ranges=...)``): a graph output written by a Conv (or a Conv's
    Relu) gets a uint8
    Q -> DQ from a calibrated ``(min, max)`` of that output (asymmetric: zero point ``round(-min / scale)``,
    scale ``(max - min) / 255``, the range widened to hold 0), so that the conv becomes a ``QLinearConv``
    instead of a float conv (the engine calibrates layer inputs, not a network's outputs: the range comes from
    the caller, e.g. the fake-quant model's outputs on the calibration batches)."""
    done = 0
    for name, (low, high) in ranges.items():
        conv = graph.producer.get(name)
        if conv is not None and conv.op_type == "Relu":  # Conv -> Relu -> output: the Q after the Relu
            before = graph.producer.get(conv.input[0])
            conv = conv if before is not None and before.op_type == "Conv" else None
        if conv is None or conv.op_type not in ("Conv", "Relu") or name not in {o.name for o in graph.g.output}:
            continue
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        scale = np.float32(max(high - low, 1e-12) / 255.0)
        zero = np.uint8(np.clip(round(-low / float(scale)), 0, 255))
        s_name, z_name = graph.constant("out_scale", np.array(scale)), graph.constant("out_zero_point", np.array(zero))
        raw, q_out = graph.fresh(name + "_float"), graph.fresh(name + "_q")
        conv.output[0] = raw
        index = list(graph.g.node).index(conv) + 1
        graph.g.node.insert(index, helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [name]))
        graph.g.node.insert(index, helper.make_node("QuantizeLinear", [raw, s_name, z_name], [q_out]))
        graph.refresh()
        done += 1
    return done


def integer_biases(graph: OrtGraph) -> int:
    """Float biases of Conv/Gemm between DQ inputs -> int32 with scale input scale x weight scale, zero point 0."""
    count = 0
    for node in [n for n in graph.g.node if n.op_type in ("Conv", "Gemm")]:
        if len(node.input) < 3 or node.input[2] not in graph.inits:
            continue
        dx, dw = graph.producer.get(node.input[0]), graph.producer.get(node.input[1])
        if not (dx and dw and dx.op_type == dw.op_type == "DequantizeLinear") or dx.input[1] not in graph.inits:
            continue
        sx, sw = graph.array(dx.input[1]), graph.array(dw.input[1])
        if sx.size != 1 or (node.op_type == "Gemm" and attr_of(node, "transB", 0) != 1 and sw.size > 1):
            continue
        bias = graph.array(node.input[2]).astype(np.float32)
        scale = (np.float32(sx) * sw.astype(np.float32)).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape).copy() if scale.size > 1 else np.full(bias.shape, scale, np.float32)
        quantized = np.clip(np.rint(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        out = graph.fresh(node.input[2] + "_dq")
        dq = helper.make_node("DequantizeLinear", [graph.constant("bias_int32", quantized),
                                                   graph.constant("bias_scale", scale),
                                                   graph.constant("bias_zp", np.zeros(bias.shape, np.int32))],
                              [out], axis=0)
        graph.g.node.insert(list(graph.g.node).index(node), dq)
        node.input[2] = out
        count += 1
    graph.refresh()
    return count


# ----------------------------------------------------------------------------- the rewrite
def _topological(graph: OrtGraph) -> None:
    ready = set(graph.inits) | {i.name for i in graph.g.input} | {""}
    pending, ordered = list(graph.g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RecipeError("onnx-qdq (onnxruntime): the rewritten graph has a cycle or a dangling input")
        pending = rest
    del graph.g.node[:]
    graph.g.node.extend(ordered)
    used = {i for n in graph.g.node for i in n.input} | {o.name for o in graph.g.output}
    keep = [t for t in graph.g.initializer if t.name in used]
    del graph.g.initializer[:]
    graph.g.initializer.extend(keep)


def place_for_onnxruntime(model: onnx.ModelProto, output_ranges: dict[str, tuple[float, float]] | None = None,
                          placement: str = "auto") -> dict[str, object]:
    """Rewrite the engine's Q/DQ ``model`` in place for onnxruntime's CPU provider; returns what changed.

    ``output_ranges``: see :func:`quantize_outputs` (off by default). ``placement``: ``auto`` keeps float the
    thin layers onnxruntime runs faster in float and pads the input channels of other thin convs
    (:mod:`.ort_thin`); ``integer`` makes every quantized layer an integer kernel (the placement before)."""
    if placement not in ("auto", "integer"):
        raise RecipeError(f"onnx-qdq (onnxruntime): unknown placement {placement!r}", hint="auto or integer")
    graph = OrtGraph(model)
    thin = ort_thin.plan(graph) if placement == "auto" else ort_thin.ThinPlan()
    ort_thin.keep_float(graph, thin)
    summary: dict[str, object] = {"kept_float": thin.kept_float,
                                  "merged_tensor_quantizers": merge_tensor_quantizers(graph),
                                  "q_above_maxpool_flatten": hoist_over_commuting(graph, thin.float_pools)}
    summary["activations"] = to_unsigned(graph)
    summary["conv_transpose_as_depth_to_space"] = upsampling_as_depth_to_space(graph)
    if output_ranges:
        summary["quantized_outputs"] = quantize_outputs(graph, output_ranges)
    summary["int8_weights"] = integer_weights(graph)
    summary["float_output_layers"] = float_weights_of_float_ops(graph)
    summary["int32_biases"] = integer_biases(graph)
    summary["padded_input_channels"] = ort_thin.pad_input_channels(graph) if placement == "auto" else []
    summary["quantizers_per_reader"] = ort_thin.one_quantizer_per_reader(graph, thin)
    _topological(graph)
    onnx.checker.check_model(model, full_check=True)
    return summary


def place(model: onnx.ModelProto, fp16: bool = False) -> dict[str, object]:
    """:func:`place_for_onnxruntime` for an export entry (FP16 graphs are refused: the integer kernels are the
    point); a warning names the layers kept float."""
    if fp16:
        raise RecipeError("onnx-qdq: target onnxruntime builds integer kernels; fp16: true does not apply",
                          hint="remove fp16: true, or use target: tensorrt")
    summary = place_for_onnxruntime(model)
    for line in ort_thin.notes({"kept_float": summary["kept_float"]}):
        warnings.warn(f"onnx-qdq: {line}", stacklevel=2)
    return summary
