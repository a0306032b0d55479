"""Reference executor for libspconv sparse ONNX files, on spconv (CPU or CUDA).

onnxruntime cannot run these files (custom node types), so this module reads one and runs it
node by node with spconv:

- ``SparseConvolution``: a fresh ``SubMConv3d`` / ``SparseConv3d`` / ``SparseInverseConv3d`` with
  the node's geometry and its FP16 weight; convs with the same ``rulebook`` share spconv's
  ``indice_key`` and therefore one index mapping (inverse convs reuse their downsampling conv's);
  ``precision="int8"`` fake-quantizes the input per tensor (scale ``input_dynamic_range/127``)
  and the weight per output channel (``weight_dynamic_ranges``), symmetric, [-128, 127]; bias
  and ``activation`` are applied after the convolution;
- ``Add``/``QuantAdd`` (int8: inputs fake-quantized with their dynamic ranges), ``Relu``;
- ``ScatterDense`` (``SparseConvTensor.dense()``, channels first, in index order),
  ``Transpose`` and ``Reshape`` (``dims``; a leading 1 stands for the batch).

Tensors whose producer writes ``output_precision="fp16"`` are rounded to float16, as the runtime
stores them; arithmetic runs in float32. Indices and the grid are given in the file's
``format`` (column order after the batch column), as the runtime receives them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import spconv.pytorch as spconv
import torch
from onnx import numpy_helper

from ..compat import spconv_cpu
from ..recipe.errors import RecipeError
from .scn_checks import attributes

spconv_cpu.install()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fake_quant(x: torch.Tensor, amax: torch.Tensor | float, axis: int | None = None) -> torch.Tensor:
    """Symmetric int8 fake quantization, scale = amax / 127, range [-128, 127]."""
    amax = torch.as_tensor(amax, dtype=torch.float32, device=x.device)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        amax = amax.reshape(shape)
    scale = amax / 127.0
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def _as_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def _conv_module(attrs: dict, weight: torch.Tensor) -> spconv.SparseModule:
    out_c, in_c = weight.shape[0], weight.shape[-1]
    kernel = list(attrs["kernel_size"])
    key = _text(attrs.get("rulebook", "")) or None
    if attrs.get("inverse"):
        module = spconv.SparseInverseConv3d(in_c, out_c, kernel, indice_key=key, bias=False)
    elif attrs.get("subm"):
        module = spconv.SubMConv3d(in_c, out_c, kernel, stride=list(attrs["stride"]), padding=list(attrs["padding"]),
                                   dilation=list(attrs["dilation"]), bias=False, indice_key=key)
    else:
        module = spconv.SparseConv3d(in_c, out_c, kernel, stride=list(attrs["stride"]),
                                     padding=list(attrs["padding"]), dilation=list(attrs["dilation"]), bias=False,
                                     indice_key=key)
    if tuple(module.weight.shape) != tuple(weight.shape):
        raise RecipeError(f"scn reference: weight shape {tuple(weight.shape)} does not fit the node's geometry "
                          f"({tuple(module.weight.shape)})")
    module.weight.data.copy_(weight)
    return module.eval().to(weight.device)


def load_scn(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(Path(model)))


def run_scn(model: onnx.ModelProto | str | os.PathLike, features: torch.Tensor, indices: torch.Tensor,
            spatial_shape: Sequence[int], batch_size: int, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Run a libspconv file on voxel ``features`` [N, C] at int32 ``indices`` [N, 4] (file's ``format``)."""
    model = load_scn(model)
    graph = model.graph
    device = torch.device(device)
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float32)).to(device)
             for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    values: dict[str, object] = {}
    x = spconv.SparseConvTensor(_as_fp16(features.detach().float().to(device)), indices.int().to(device),
                                list(spatial_shape), int(batch_size))
    values[graph.input[0].name] = x
    with torch.no_grad():
        for node in graph.node:
            attrs = attributes(node)
            values[node.output[0]] = _run_node(node, attrs, values, inits, producers, int(batch_size))
    return [values[o.name] for o in graph.output]


def _round_if_fp16(node: onnx.NodeProto, attrs: dict, features: torch.Tensor) -> torch.Tensor:
    return _as_fp16(features) if _text(attrs.get("output_precision", "fp16")) == "fp16" else features


def _run_node(node: onnx.NodeProto, attrs: dict, values: dict, inits: dict, producers: dict, batch: int) -> object:
    op = node.op_type
    if op == "SparseConvolution":
        x = values[node.input[0]]
        weight, bias = inits[node.input[1]], inits[node.input[2]]
        features = x.features
        if _text(attrs.get("precision")) == "int8":
            features = fake_quant(features, attrs["input_dynamic_range"])
            weight = fake_quant(weight, list(attrs["weight_dynamic_ranges"]), axis=0)
        module = _conv_module(attrs, weight)
        out = module(x.replace_feature(features))
        result = out.features + bias
        if _text(attrs.get("activation")) == "ReLU":
            result = torch.relu(result)
        return out.replace_feature(_round_if_fp16(node, attrs, result))
    if op in ("Add", "QuantAdd"):
        a, b = values[node.input[0]], values[node.input[1]]
        if a.features.shape != b.features.shape or not (a.indices is b.indices or torch.equal(a.indices, b.indices)):
            raise RecipeError(f"scn reference: {node.name} adds sparse tensors at different coordinates")
        fa, fb = a.features, b.features
        if _text(attrs.get("precision")) == "int8":
            fa = fake_quant(fa, attrs["input0_dynamic_range"])
            fb = fake_quant(fb, attrs["input1_dynamic_range"])
        return a.replace_feature(_round_if_fp16(node, attrs, fa + fb))
    if op == "Relu":
        x = values[node.input[0]]
        return x.replace_feature(torch.relu(x.features))
    if op == "ScatterDense":
        x = values[node.input[0]]
        if list(attrs["input_spatial_shape"]) != list(x.spatial_shape):
            raise RecipeError(f"scn reference: {node.name} expects spatial shape {list(attrs['input_spatial_shape'])}"
                              f", the sparse tensor has {list(x.spatial_shape)}")
        return x.dense()  # [B, C, *spatial] in index order
    if op == "Transpose":
        return values[node.input[0]].permute(*attrs["dims"]).contiguous()
    if op == "Reshape":
        dims = list(attrs["dims"])
        if dims and dims[0] == 1:
            dims[0] = batch
        return values[node.input[0]].reshape(dims)
    raise RecipeError(f"scn reference: node type {op} is not part of the libspconv format")


def swap_layout(indices: torch.Tensor, spatial_shape: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Indices/grid in the other coordinate order: columns 1 and 3 swapped, spatial shape reversed."""
    return indices[:, [0, 3, 2, 1]].contiguous(), list(reversed(list(spatial_shape)))
