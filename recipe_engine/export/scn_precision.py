"""Precision chains of an ``onnx-sparse`` file: which tensors libspconv carries in int8.

NVIDIA's exporters (CUDA-CenterPoint ``qat/onnx_export/export-scn.py``, CUDA-BEVFusion
``qat/export-scn.py``) write ``precision`` and ``output_precision`` int8 on every layer and list
the few exceptions, so every int8 layer of their files reads an int8 tensor made by its producer.
The engine derives the same chain from the quantizers instead of from a list:

- a conv is int8 when its input and weight quantizers are enabled, an Add when its op-site
  quantizer is (the caller decides; :func:`trace_layers` does it from a bare trace);
- a tensor is stored int8 (its producer's ``output_precision``) when every layer that reads it
  is int8 and all of them read it through one quantizer, so that one scale serves them all;
  otherwise fp16. ScatterDense reads fp16; the graph input ``"0"`` is fp16;
- both inputs of an Add need one precision: when they differ, the int8 one becomes fp16;
- an int8 layer left reading an fp16 tensor is a *break*. NVIDIA's files have none and what the
  closed runtime does with one is not documented, so :func:`chain_error` turns breaks into an
  error whose hint names the share groups that remove them, unless the export sets
  ``allow_fp16_to_int8``.

The rule needs only which quantizers are enabled and which are shared (not their amax), so
:func:`check_trace` can run it on a trace before calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..quant import backend
from ..recipe.errors import RecipeError
from .sparse_trace import Op, SparseTrace

LAYER_KINDS = ("conv", "add")


@dataclass
class Layer:
    """A conv or Add as the chain sees it: its precision and the quantizer reading each input slot."""

    op: Op
    name: str
    precision: str
    quantizers: list[Any]  # per input slot (None where nothing quantizes it)


@dataclass
class Cause:
    """Why a tensor is fp16 although an int8 layer reads it."""

    tensor: str  # "the graph input" or "<producer>'s output"
    kind: str  # "input" (graph input) | "mixed" (fp16 readers too) | "conflict" (several quantizers) | "add"
    reason: str
    quantizers: list[str] = field(default_factory=list)  # distinct reader quantizers (conflict causes)
    block: str | None = None  # module path all those quantizers live under


@dataclass
class Chain:
    output: dict[int, str]  # id(op) -> output precision of every conv/Add
    breaks: list[tuple[str, int, Cause]]  # (int8 layer, input slot, why its input is fp16)
    notes: list[str]


def _name(names_of: dict[int, list[str]], quantizer: Any) -> str:
    names = names_of.get(id(quantizer))
    return names[0] if names else "<unnamed quantizer>"


def assign(ops: list[Op], layers: dict[int, Layer], alias: dict[int, int], names_of: dict[int, list[str]]) -> Chain:
    """Output precision of every layer, and the int8 layers that would read fp16."""

    def resolve(v: int) -> int:
        while v in alias:
            v = alias[v]
        return v

    producer = {op.output: op for op in ops}
    readers: dict[int, list[tuple[Op, int]]] = {}
    for op in ops:
        for slot, v in enumerate(op.inputs):
            readers.setdefault(resolve(v), []).append((op, slot))

    def reading(v: int) -> list[tuple[Op, int]]:  # the layers (and others) that read v, through Relu
        found: list[tuple[Op, int]] = []
        for op, slot in readers.get(v, []):
            found += reading(op.output) if op.kind == "relu" else [(op, slot)]
        return found

    def source(v: int) -> Op | None:  # the conv/Add that makes v (through Relu); None = the graph input
        op = producer.get(resolve(v))
        while op is not None and op.kind == "relu":
            op = producer.get(resolve(op.inputs[0]))
        return op

    def why_fp16(op: Op) -> Cause:
        who = f"{layers[id(op)].name}'s output"
        seen = reading(op.output)
        others = [r for r, _ in seen if id(r) not in layers or layers[id(r)].precision != "int8"]
        if others:
            names = ", ".join(layers[id(r)].name if id(r) in layers else r.kind for r in others)
            return Cause(who, "mixed", f"it is also read in fp16 (by {names})")
        distinct: dict[int, Any] = {}
        for r, slot in seen:
            q = layers[id(r)].quantizers[slot]
            distinct.setdefault(id(q), q)
        if len(distinct) > 1:
            names = [_name(names_of, q) for q in distinct.values()]
            return Cause(who, "conflict", f"its readers quantize it with {len(names)} different quantizers: "
                         f"{', '.join(names)}", names, _common_module(names))
        return Cause(who, "add", "the other input of an Add it feeds is fp16")

    output: dict[int, str] = {}
    for op in ops:
        if id(op) not in layers:
            continue
        seen = reading(op.output)
        int8 = bool(seen) and all(id(r) in layers and layers[id(r)].precision == "int8" for r, _ in seen)
        if int8:
            int8 = len({id(layers[id(r)].quantizers[slot]) for r, slot in seen}) == 1
        output[id(op)] = "int8" if int8 else "fp16"

    def precision_of(v: int) -> str:
        op = source(v)
        return "fp16" if op is None else output[id(op)]

    notes: list[str] = []
    changed = True
    while changed:
        changed = False
        for op in ops:
            if op.kind != "add" or id(op) not in layers:
                continue
            if precision_of(op.inputs[0]) != precision_of(op.inputs[1]):
                for v in op.inputs:
                    made_by = source(v)
                    if made_by is not None and output[id(made_by)] == "int8":
                        output[id(made_by)] = "fp16"
                        notes.append(f"{layers[id(made_by)].name}: output set to fp16 so that both inputs of "
                                     f"{layers[id(op)].name} have one precision")
                        changed = True

    breaks: list[tuple[str, int, Cause]] = []
    for op in ops:
        layer = layers.get(id(op))
        if layer is None or layer.precision != "int8":
            continue
        for slot, v in enumerate(op.inputs):
            made_by = source(v)
            if made_by is None:
                breaks.append((layer.name, slot, Cause("the graph input", "input", "libspconv feeds the voxel "
                                                       "features in fp16")))
            elif output[id(made_by)] == "fp16":
                breaks.append((layer.name, slot, why_fp16(made_by)))
    return Chain(output, breaks, notes)


def _common_module(names: list[str]) -> str | None:
    parts = [n.split(".")[:-1] for n in names]  # the quantizers' owners
    common: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return ".".join(common) or None


# ----------------------------------------------------------------------------- errors and hints
def chain_error(chain: Chain, classes: dict[str, type] | None = None) -> RecipeError:
    """The error for a chain with breaks: which layers, why, and the share groups that fix it."""
    layers = list(dict.fromkeys(name for name, _, _ in chain.breaks))
    shown = ", ".join(layers[:6]) + (f", ... (+{len(layers) - 6})" if len(layers) > 6 else "")
    first = chain.breaks[0][2]
    message = (f"onnx-sparse: {len(layers)} int8 layer(s) would read fp16 tensors ({shown}); NVIDIA's exporters "
               f"never write that and libspconv does not document it. First: {chain.breaks[0][0]} reads "
               f"{first.tensor}: {first.reason}")
    return RecipeError(message, hint=chain_hint(chain, classes or {}))


def chain_hint(chain: Chain, classes: dict[str, type]) -> str:
    causes = {c.tensor: c for _, _, c in chain.breaks}.values()
    groups: dict[tuple[str, ...], list[str]] = {}  # relative names -> blocks
    loose: list[list[str]] = []
    for cause in causes:
        if not cause.quantizers:
            continue
        if cause.block and cause.block in classes:
            relative = tuple("{module}" + n[len(cause.block):] for n in cause.quantizers)
            groups.setdefault(relative, []).append(cause.block)
        else:
            loose.append(cause.quantizers)
    parts: list[str] = []
    for relative, blocks in groups.items():
        cls = classes[blocks[0]]
        if len(blocks) > 1 and all(classes.get(b) is cls for b in blocks):
            quoted = ", ".join(f'"{n}"' for n in relative)
            parts.append(f'{{for_each: {{type: "{cls.__module__}:{cls.__qualname__}"}}, quantizers: [{quoted}]}}')
        else:
            loose += [[n.replace("{module}", b) for n in relative] for b in blocks]
    parts += ["[" + ", ".join(group) + "]" for group in loose]
    fixes = []
    if parts:
        fixes.append("tie the quantizers that read one tensor: share: [" + ", ".join(parts) + "]")
    if any(c.kind == "input" for _, _, c in chain.breaks):
        fixes.append("keep the layer that reads the voxel features in fp16 (`disable:` it, as NVIDIA's exporters "
                     "do with conv_input)")
    if any(c.kind == "mixed" for _, _, c in chain.breaks):
        fixes.append("quantize every reader of a tensor alike (all int8 or all fp16)")
    fixes.append("or set `allow_fp16_to_int8: true` on this export to write such layers anyway")
    return "; ".join(fixes)


def break_notes(chain: Chain) -> list[str]:
    """Notes for an export that allows breaks (``allow_fp16_to_int8``)."""
    causes: dict[str, list[str]] = {}
    for name, _, cause in chain.breaks:
        causes.setdefault(name, []).append(f"{cause.tensor}: {cause.reason}")
    return [f"{name}: int8 layer reads fp16 ({'; '.join(found)}); allowed by allow_fp16_to_int8"
            for name, found in causes.items()]


# ----------------------------------------------------------------------------- before calibration
def trace_layers(trace: SparseTrace) -> dict[int, Layer]:
    """Layers of a bare trace: a conv is int8 when both its quantizers are enabled, an Add when its site's are."""
    layers: dict[int, Layer] = {}
    counter: dict[str, int] = {}
    for op in trace.ops:
        if op.kind == "conv":
            input_q = getattr(op.module, "input_quantizer", None)
            weight_q = getattr(op.module, "weight_quantizer", None)
            int8 = all(q is not None and backend.is_enabled(q) for q in (input_q, weight_q))
            name = op.path if op.info.get("call", 0) == 0 else f"{op.path}:{op.info['call']}"
            layers[id(op)] = Layer(op, name, "int8" if int8 else "fp16", [input_q if int8 else None])
        elif op.kind == "add":
            number = counter.get(op.path, 0)
            counter[op.path] = number + 1
            quantizers = list(op.info["quantizers"])
            int8 = all(q is not None and backend.is_enabled(q) for q in quantizers)
            name = f"{op.path}.add{number}" if op.path else f"add{number}"
            layers[id(op)] = Layer(op, name, "int8" if int8 else "fp16", quantizers if int8 else [None, None])
    return layers


def check_trace(trace: SparseTrace, names_of: dict[int, list[str]], allow_fp16_to_int8: bool = False) -> Chain:
    """Run the chain rule on a trace (before calibration is fine); raise on breaks unless allowed."""
    chain = assign(trace.ops, trace_layers(trace), {}, names_of)
    if chain.breaks and not allow_fp16_to_int8:
        raise chain_error(chain, trace.module_classes)
    return chain
