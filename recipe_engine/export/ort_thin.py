"""Thin layers under ``target: onnxruntime``: which quantized layers stay float, which get padded channels.

A *thin* layer is a Conv or Gemm whose reduction length ``K`` (input channels per group x kernel volume) is
below :data:`THIN_K`: few multiply-adds per output, so its cost is the output (requantization, layout)
rather than the arithmetic, and onnxruntime's integer kernels gain little or lose. The rule is static
(decided from the graph, not timed during export), so that one recipe writes the same file, byte for byte,
on every machine. It was derived from onnxruntime 1.32 CPU profiles (1 thread, AVX-512 VNNI Xeon, fastest
of 30-50 runs) of the zoo parts and of single-conv graphs:

========================================  ==========  ===========  ================  =======================
layer (input, K)                          float conv  integer      integer, Cin->4   what follows it
========================================  ==========  ===========  ================  =======================
digits stem 64x1x16x16, 1x3x3, K=9        53 us       333 us       200 us            the block's residual add
camera stem 8x3x64x176, 3x5x5 /2, K=75    355 us      751 us       626 us            MaxPool, 2 convs read it
PointPillars PFN 16384x9 Linear, K=9      192 us (a)  267 us (b)   -                 the graph output
single conv 8x3x96x96, 3x7x7 /2, K=147    2128 us     1397 us      1639 us           (isolated, -> 64 ch)
single conv 8x6x64x64, 6x3x3, K=54        1217 us     1022 us      732 us            (isolated, -> 32 ch)
========================================  ==========  ===========  ================  =======================

(a) Gemm with the Relu fused; (b) input Q 36 + QGemm 231 us, and the float Relu then runs apart (134 us).
onnxruntime's fast integer conv (MLAS's symmetric kernel) needs the input channels to be a multiple of 4
(and >= 16 output channels, a multiple of 8); below that the generic path runs, slow at small K. Hence:

1. **Float, whole part.** A thin layer that reads the graph input and writes the graph output (through a
   Relu at most) has no integer tensor to hand on: the Q of its input and its float output cost more than
   the integer multiply-adds save (the PFN). It is exported float (its FP32 weights), the FP32 graph.
2. **Float stem with its pool.** A thin Conv reading the graph input (through reshapes), followed by
   ``[Relu] -> MaxPool`` whose output only quantized convs read, at least two of them: the conv, its Relu and
   the pool stay float (onnxruntime fuses them in its NCHWc layout) and the first Q is the pooled tensor's.
   Each reading conv gets its own Q of it: with one Q, onnxruntime's QDQ propagation moves it above the
   MaxPool, which then runs as a uint8 NCHW max-pool (1360 us against 40 us float for the camera). Not
   when the stem's output feeds an add (digits): the integer add then runs in NCHW and drags the following
   uint8 max-pool into NCHW with it (841 us against 33 us NHWC; the whole graph 1.79 ms against 1.14 ms).
3. **Padded channels.** Other thin integer convs with input channels not a multiple of 4 (one group, >= 16
   output channels, a multiple of 8) read their uint8 input padded with the zero point to a multiple of 4
   channels and zero weights there: the same integers, and MLAS's fast kernel (digits stem 333 -> 200 us).
   Not at K >= :data:`THIN_K`, where the padded kernel was slower than the generic one (K=147 above).

The layers kept float are named in the export's notes, with the reason, and a warning is issued.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .ort_graph import OrtGraph, attr_of, dequantizers, is_activation_q, output_quantized

#: Reduction length (input channels per group x kernel volume) below which a layer is thin (see the table).
THIN_K = 128
#: Input channel multiple of MLAS's fast (symmetric) integer conv kernel.
CHANNEL_MULTIPLE = 4
#: Ops between the graph input and a layer that only move values (the camera's [B, N, 3, H, W] reshape).
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}


@dataclass
class ThinPlan:
    """What :func:`plan` decided: float layers (with the ops kept float with them) and where Q stays put."""

    kept_float: list[dict] = field(default_factory=list)  # {"layer", "ops", "reason"}
    float_pools: set[str] = field(default_factory=set)  # MaxPool nodes no Q is moved above
    split_tensors: list[str] = field(default_factory=list)  # float pooled tensors: one Q per reading conv


def _quantized_input(graph: OrtGraph, node: onnx.NodeProto, index: int) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """``(Q, DQ)`` feeding ``node.input[index]`` (``x -> Q -> DQ -> node``), else None."""
    dq = graph.producer.get(node.input[index])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = graph.producer.get(dq.input[0])
    return (q, dq) if q is not None and q.op_type == "QuantizeLinear" else None


def _reduction(graph: OrtGraph, node: onnx.NodeProto) -> int | None:
    """K of a quantized Conv/Gemm (its weight a float initializer behind Q -> DQ), else None."""
    weight = _quantized_input(graph, node, 1) if len(node.input) > 1 else None
    if weight is None or weight[0].input[0] not in graph.inits:
        return None
    shape = graph.array(weight[0].input[0]).shape
    if node.op_type == "Conv":
        return int(np.prod(shape[1:]))
    if node.op_type == "Gemm" and len(shape) == 2:
        return int(shape[1] if attr_of(node, "transB", 0) else shape[0])
    return None


def _from_graph_input(graph: OrtGraph, name: str) -> bool:
    inputs = {i.name for i in graph.g.input}
    while name not in inputs:
        node = graph.producer.get(name)
        if node is None or node.op_type not in _RESHAPES:
            return False
        name = node.input[0]
    return True


def _only_reader(graph: OrtGraph, name: str, op_type: str) -> onnx.NodeProto | None:
    readers = graph.consumers.get(name, [])
    outputs = {o.name for o in graph.g.output}
    return readers[0] if len(readers) == 1 and readers[0].op_type == op_type and name not in outputs else None


def _reading_convs(graph: OrtGraph, name: str) -> list[onnx.NodeProto] | None:
    """The quantized convs reading ``name`` through its activation Q(s); None if anything else reads it."""
    if name in {o.name for o in graph.g.output}:
        return None
    convs = []
    for q in graph.consumers.get(name, []):
        if not is_activation_q(graph, q):
            return None
        for dq in dequantizers(graph, q):
            for reader in graph.consumers.get(dq.output[0], []):
                if reader.op_type != "Conv" or reader.input[0] != dq.output[0] or _reduction(graph, reader) is None:
                    return None
                convs.append(reader)
        if len(graph.consumers.get(q.output[0], [])) != len(dequantizers(graph, q)):
            return None
    return convs


def plan(graph: OrtGraph) -> ThinPlan:
    """Decide the float layers of the engine's Q/DQ graph (rules 1 and 2 of the module docstring)."""
    decided = ThinPlan()
    outputs = {o.name for o in graph.g.output}
    for node in [n for n in graph.g.node if n.op_type in ("Conv", "Gemm")]:
        k, data = _reduction(graph, node), _quantized_input(graph, node, 0)
        if k is None or k >= THIN_K or data is None or not _from_graph_input(graph, data[0].input[0]):
            continue
        relu = _only_reader(graph, node.output[0], "Relu")
        last = relu.output[0] if relu is not None else node.output[0]
        if last in outputs and len(graph.consumers.get(last, [])) == 0:
            decided.kept_float.append({"layer": node.name, "ops": [n.name for n in (node, relu) if n is not None],
                                       "reason": f"thin (K={k} < {THIN_K}), reads the graph input and writes the "
                                       "graph output: no integer tensor to hand on, Q/DQ would cost more than "
                                       "the integer multiply-adds save"})
            continue
        pool = _only_reader(graph, last, "MaxPool") if node.op_type == "Conv" else None
        readers = _reading_convs(graph, pool.output[0]) if pool is not None else None
        if readers is not None and len(readers) >= 2:
            decided.kept_float.append({"layer": node.name, "ops": [n.name for n in (node, relu, pool) if n is not None],
                                       "reason": f"thin stem (K={k} < {THIN_K}) followed by a max-pool that "
                                       f"{len(readers)} quantized convs read: float conv + pool are faster in "
                                       "onnxruntime than its integer conv; the pooled tensor is quantized once "
                                       "per reading conv"})
            decided.float_pools.add(pool.name)
            decided.split_tensors.append(pool.output[0])
    return decided


def keep_float(graph: OrtGraph, decided: ThinPlan) -> int:
    """The planned layers read their float input and their FP32 weights (their Q/DQ pairs removed)."""
    layers = {entry["layer"] for entry in decided.kept_float}
    for node in [n for n in graph.g.node if n.name in layers]:
        for index in (0, 1):
            pair = _quantized_input(graph, node, index)
            if pair is not None:
                node.input[index] = pair[0].input[0]
    _drop_unread(graph)
    return len(layers)


def _drop_unread(graph: OrtGraph) -> None:
    outputs = {o.name for o in graph.g.output}
    while True:
        graph.refresh()
        unread = [n for n in graph.g.node if not any(graph.consumers.get(o) or o in outputs for o in n.output)]
        if not unread:
            return
        for node in unread:
            graph.g.node.remove(node)


def pad_input_channels(graph: OrtGraph) -> list[dict]:
    """Rule 3, after the weights are int8 initializers: ``Q -> Pad(zero point) -> DQ -> Conv`` with zero weights
    for the new channels; returns ``{"layer", "channels": [from, to]}`` per conv."""
    padded = []
    for conv in [n for n in graph.g.node if n.op_type == "Conv" and attr_of(n, "group", 1) == 1]:
        data, weight = graph.producer.get(conv.input[0]), graph.producer.get(conv.input[1])
        if (data is None or weight is None or data.op_type != "DequantizeLinear" or weight.op_type != "DequantizeLinear"
                or weight.input[0] not in graph.inits or data.input[1] not in graph.inits):
            continue
        w = graph.array(weight.input[0])
        c_out, c_in = w.shape[0], w.shape[1]
        extra = -c_in % CHANNEL_MULTIPLE
        if (w.dtype != np.int8 or not extra or int(np.prod(w.shape[1:])) >= THIN_K or c_out < 16 or c_out % 8
                or not output_quantized(graph, conv)):
            continue
        pads = np.zeros(2 * w.ndim, np.int64)
        pads[w.ndim + 1] = extra  # end of the channel axis
        zero_point = data.input[2] if len(data.input) > 2 else graph.constant("pad_zp", np.array(0, np.uint8))
        padded_q, padded_dq = graph.fresh(conv.name + "_padded_q"), graph.fresh(conv.name + "_padded")
        index = list(graph.g.node).index(conv)
        graph.g.node.insert(index, helper.make_node("DequantizeLinear", [padded_q, data.input[1], zero_point],
                                                    [padded_dq]))
        graph.g.node.insert(index, helper.make_node("Pad", [data.input[0], graph.constant("pads", pads), zero_point],
                                                    [padded_q], mode="constant"))
        wide = np.concatenate([w, np.zeros((c_out, extra, *w.shape[2:]), np.int8)], axis=1)
        conv.input[0] = padded_dq
        if all(reader is conv for reader in graph.consumers.get(weight.output[0], [])):
            weight.input[0] = graph.constant("w_padded", wide)
        else:  # the weight DequantizeLinear is shared: this conv gets its own
            out = graph.fresh(conv.name + "_w_padded")
            graph.g.node.insert(index, helper.make_node("DequantizeLinear",
                                                        [graph.constant("w_padded", wide), *weight.input[1:]],
                                                        [out], **{a.name: helper.get_attribute_value(a)
                                                                  for a in weight.attribute}))
            conv.input[1] = out
        padded.append({"layer": conv.name, "channels": [int(c_in), int(c_in + extra)]})
        graph.refresh()
    _drop_unread(graph)
    return padded


def one_quantizer_per_reader(graph: OrtGraph, decided: ThinPlan) -> int:
    """Give each conv reading a float pooled tensor its own Q -> DQ (own scale/zero-point constants, so that
    onnxruntime neither merges them nor moves a single Q above the MaxPool); returns the Qs added."""
    added = 0
    for name in decided.split_tensors:
        for q in [n for n in graph.consumers.get(name, []) if is_activation_q(graph, n)]:
            added += _own_quantizers(graph, name, q)
    _drop_unread(graph)
    return added


def _own_quantizers(graph: OrtGraph, name: str, q: onnx.NodeProto) -> int:
    """Every reader of ``q`` after its first gets a Q -> DQ of ``name`` with ``q``'s parameters."""
    readers = [(dq, r) for dq in dequantizers(graph, q) for r in graph.consumers.get(dq.output[0], [])]
    scale, zero_point = graph.array(q.input[1]), graph.array(q.input[2])
    index = list(graph.g.node).index(q) + 1
    for dq, reader in readers[1:]:
        s, z = graph.constant("split_scale", scale.copy()), graph.constant("split_zero_point", zero_point.copy())
        q_out, dq_out = graph.fresh(name + "_q"), graph.fresh(name + "_dq")
        graph.g.node.insert(index, helper.make_node("DequantizeLinear", [q_out, s, z], [dq_out]))
        graph.g.node.insert(index, helper.make_node("QuantizeLinear", [name, s, z], [q_out]))
        reader.input[:] = [dq_out if i == dq.output[0] else i for i in reader.input]
    graph.refresh()
    return max(len(readers) - 1, 0)


def notes(summary: dict) -> list[str]:
    """Report lines for an export's notes: the layers kept float and why, the convs given padded channels."""
    lines = [f"onnxruntime placement: {', '.join(e['ops'])} kept float: {e['reason']}"
             for e in summary.get("kept_float", [])]
    lines += [f"onnxruntime placement: {e['layer']} reads {e['channels'][1]} input channels (padded from "
              f"{e['channels'][0]}, zero weights) for onnxruntime's fast integer conv"
              for e in summary.get("padded_input_channels", [])]
    return lines
