"""``onnx-qdq``: dense (sub)modules to ONNX with QuantizeLinear/DequantizeLinear pairs.

The fake-quantized module is exported with the TorchScript exporter (``dynamo=False``) while
the backend runs torch's native fake-quant ops, which that exporter writes as Q/DQ pairs:
per-tensor for activations, per-channel for weights (axis 0, or 1 for ConvTranspose weights
``[I, O, k..]``). Disabled quantizers run as identities and leave no Q/DQ. Op-input quantizers
(add/cat sites) put a Q/DQ on each input of the op, all with the site's one scale.

After export the graph is normalised: ``Constant`` nodes become initializers, and identical
Q/DQ pairs on the same tensor (shared quantizers applied twice to one tensor) are merged, so
TensorRT sees one scale per tensor. Optionally the graph becomes FP16 (:mod:`.fp16`).

Why not the dynamo exporter: ``torch.export`` cannot trace pytorch-quantization's
TensorQuantizer (``amax.item()`` and Python branching on quantizer state) or the scoped
TorchFunctionMode used for op sites, and its ONNX translation emits Q/DQ only through
``torch.ops.quantized_decomposed``. Using it would need a backend mode that calls
``torch.ops.quantized_decomposed.quantize_per_tensor/per_channel`` with tensor scales, op sites
expressed as module wrappers rather than a TorchFunctionMode, and checking that the translation
keeps per-channel axes.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..quant import backend
from ..recipe.errors import RecipeError
from .fp16 import convert_to_fp16


@dataclass
class FlatInputs:
    """A module call flattened for torch.onnx.export: args, names and numpy feeds."""

    args: tuple
    kwargs: dict[str, Any]
    names: list[str] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)

    def feeds(self, dtype: np.dtype | None = None) -> dict[str, np.ndarray]:
        out = {}
        for name, tensor in zip(self.names, self.tensors, strict=True):
            array = tensor.detach().cpu().numpy()
            out[name] = array.astype(dtype) if dtype is not None and array.dtype == np.float32 else array
        return out


def _flatten(value: Any, name: str, names: list[str], tensors: list[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        names.append(name)
        tensors.append(value)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(item, f"{name}.{i}", names, tensors)
    elif isinstance(value, dict):
        raise RecipeError(f"onnx-qdq: input {name!r} is a dict; the TorchScript exporter needs tensors, "
                          "lists or tuples", hint="export a sub-module whose forward takes tensors")
    # other values (ints, None, flags) are constants of the exported graph


def flatten_inputs(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> FlatInputs:
    """Bind the captured call to ``module.forward``'s signature; tensor leaves are named after parameters
    (or, for a :class:`.calls.TensorCall`, after its ``onnx_input_names``)."""
    names = getattr(module, "onnx_input_names", None)
    if names is not None:
        return FlatInputs(tuple(args), {}, list(names), list(args))
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except TypeError as exc:
        raise RecipeError(f"onnx-qdq: the captured inputs do not match {type(module).__name__}.forward: {exc}") from None
    flat = FlatInputs(tuple(bound.args), dict(bound.kwargs))
    for name, value in bound.arguments.items():
        _flatten(value, name, flat.names, flat.tensors)
    if not flat.tensors:
        raise RecipeError(f"onnx-qdq: {type(module).__name__}.forward received no tensor inputs")
    return flat


def flatten_outputs(output: Any, prefix: str = "output") -> tuple[list[str], list[torch.Tensor]]:
    """Output names (``output`` / ``output0``.. / dict keys) and tensors, in exporter order."""
    if isinstance(output, torch.Tensor):
        return [prefix], [output]
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    if isinstance(output, (list, tuple)):
        for i, item in enumerate(output):
            n, t = flatten_outputs(item, f"{prefix}{i}" if prefix == "output" else f"{prefix}.{i}")
            names += n
            tensors += t
    elif isinstance(output, dict):
        for key, item in output.items():
            n, t = flatten_outputs(item, str(key))
            names += n
            tensors += t
    return names, tensors


@contextlib.contextmanager
def export_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and torch-native fake quantization (Q/DQ in ONNX), both restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with backend.export_mode():
            yield
    finally:
        module.train(was_training)


def torchscript_export(module: nn.Module, flat: FlatInputs, output_names: list[str], opset: int,
                       dynamic_axes: dict[str, dict[int, str]] | None) -> onnx.ModelProto:
    """torch.onnx.export with the TorchScript exporter (dynamo=False), in export mode."""
    buffer = io.BytesIO()
    with export_mode(module), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, flat.args, buffer, kwargs=flat.kwargs or None, dynamo=False,
                              opset_version=opset, input_names=flat.names, output_names=output_names,
                              dynamic_axes=dynamic_axes or None, do_constant_folding=True,
                              training=torch.onnx.TrainingMode.EVAL)
        except Exception as exc:  # the exporter raises many types; the message is what matters
            raise RecipeError(f"onnx-qdq: torch.onnx.export (TorchScript, opset {opset}) failed: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                              hint="check that the module is traceable (no data-dependent Python control flow)") \
                from exc
    exported = onnx.load_from_string(buffer.getvalue())
    try:
        backend.finish_onnx(exported)  # e.g. modelopt's FP8 custom ops -> standard FLOAT8E4M3FN Q/DQ
    except ValueError as exc:
        raise RecipeError(f"onnx-qdq: {exc}", hint="set `opset: 19` in this export entry") from None
    return exported


# ----------------------------------------------------------------------------- graph normalisation
def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Move ``Constant`` nodes holding a tensor into initializers (same names)."""
    graph = model.graph
    keep = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"}:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs["value"].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _tensor_key(graph_inits: dict[str, onnx.TensorProto], name: str) -> tuple:
    tensor = graph_inits.get(name)
    if tensor is None:
        return ("value", name)
    array = numpy_helper.to_array(tensor)
    return ("const", str(array.dtype), array.shape, array.tobytes())


def merge_duplicate_qdq(model: onnx.ModelProto) -> int:
    """Merge Q (then DQ) nodes with the same input, scale, zero point and axis; returns nodes removed."""
    graph = model.graph
    removed = 0
    for op_type in ("QuantizeLinear", "DequantizeLinear"):
        inits = {t.name: t for t in graph.initializer}
        seen: dict[tuple, str] = {}
        rename: dict[str, str] = {}
        keep = []
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            if node.op_type == op_type:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                key = (node.input[0], *(_tensor_key(inits, n) for n in node.input[1:]), axis)
                if key in seen:
                    rename[node.output[0]] = seen[key]
                    removed += 1
                    continue
                seen[key] = node.output[0]
            keep.append(node)
        outputs = {o.name for o in graph.output}
        if outputs & set(rename):
            continue  # never rename a graph output; keep the duplicates instead
        del graph.node[:]
        graph.node.extend(keep)
    prune_initializers(model)
    return removed


def prune_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def qdq_census(model: onnx.ModelProto) -> dict[str, Any]:
    """Q/DQ counts and the axes of per-channel DequantizeLinear nodes per consumer op type."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def consumers(name: str) -> list[str]:  # op types reading ``name``, looking through Casts
        found = []
        for node in readers.get(name, []):
            found += consumers(node.output[0]) if node.op_type == "Cast" else [node.op_type]
        return found

    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    per_channel = []
    for node in dequantize:
        scale = inits.get(node.input[1])
        if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            per_channel.append({"axis": axis, "channels": int(scale.dims[0]),
                                "consumers": consumers(node.output[0])})
    return {"quantize_linear": len(quantize), "dequantize_linear": len(dequantize),
            "per_channel": per_channel}


# ----------------------------------------------------------------------------- the export
@dataclass
class QdqExport:
    model: onnx.ModelProto
    inputs: FlatInputs
    output_names: list[str]
    merged_qdq: int


def export_qdq(module: nn.Module, args: tuple, kwargs: dict[str, Any], opset: int = 17, fp16: bool = False,
               dynamic_axes: dict[str, dict[int, str]] | None = None) -> QdqExport:
    """Export ``module`` called with ``args``/``kwargs`` to a normalised (optionally FP16) Q/DQ graph."""
    if opset < 13:
        raise RecipeError(f"onnx-qdq: opset {opset} cannot express per-channel Q/DQ; use opset >= 13")
    flat = flatten_inputs(module, args, kwargs)
    with torch.no_grad(), export_mode(module):
        output_names, _ = flatten_outputs(module(*flat.args, **flat.kwargs))
    output_names = list(getattr(module, "onnx_output_names", output_names))
    if not output_names:
        raise RecipeError(f"onnx-qdq: {type(module).__name__}.forward returns no tensors")
    unknown = sorted(set(dynamic_axes or {}) - set(flat.names) - set(output_names))
    if unknown:
        raise RecipeError(f"onnx-qdq: dynamic_axes names {unknown} are neither inputs nor outputs",
                          hint=f"inputs: {', '.join(flat.names)}; outputs: {', '.join(output_names)}")
    model = torchscript_export(module, flat, output_names, opset, dynamic_axes)
    constants_to_initializers(model)
    merged = merge_duplicate_qdq(model)
    if fp16:
        model = convert_to_fp16(model)
    model.graph.name = type(module).__name__
    onnx.checker.check_model(model, full_check=True)
    return QdqExport(model, flat, output_names, merged)
