"""Reference runtime for libspconv sparse ONNX files, written from the format, not from spconv.

onnxruntime cannot run these files (custom node types). This module reads one with ``onnx`` and
computes it as the format document (``/work/shared/scn-onnx-format.md``) defines it; it does
not import spconv, so it cannot inherit spconv's conventions (e.g. spconv 2.3.8's kernel-size-1
path, which multiplies by ``weight.reshape(I, O)``). Index mappings come from
:mod:`.scn_rulebook`.

- ``SparseConvolution``: weight read as ``[O, k0, k1, k2, I]`` for every kernel size, bias
  required. ``precision="int8"``: the input is quantized with ``scale = input_dynamic_range/127``,
  the weight per output channel with ``weight_dynamic_ranges[o]/127`` (round half to even,
  clamp to [-127, 127], symmetric), products accumulated exactly (float32 matmuls of at most
  1040 int8 products, each an exact integer below 2**24, summed in float64), dequantized by ``s_x * s_w[o]``; then bias and ``activation``. ``fp16``: FP16
  inputs and weights, float32 accumulation. libspconv's kernels are closed source; these are the
  format's documented semantics, not a bit-exact copy of the GPU kernels.
- ``output_precision``: ``int8`` stores the output on the int8 grid of the range its readers
  quantize it with (they must agree: one tensor has one scale); ``fp16`` rounds to float16.
- ``Add``/``QuantAdd`` (int8: each input on its range's grid), ``Relu``, ``ScatterDense``
  (channels first, sites in index order), ``Transpose``/``Reshape`` (``dims``; a leading 1
  stands for the batch).

Indices and the grid are given in the file's ``format`` order, as the runtime receives them.
A tensor is freed after the last node that reads it and a rulebook after the last conv that uses
its key, so a run holds about one layer's features and index pairs, not the whole network's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..recipe.errors import RecipeError
from .scn_checks import attributes
from .scn_rulebook import RulebookCache, Sites, make_sites

QMAX = 127.0
CHUNK_ELEMENTS = 1 << 22  # gathered feature elements per matmul (16 MiB in float32)
EXACT_FP32 = (1 << 24) // int(QMAX * QMAX)  # int8 x int8 products that float32 sums exactly (1040)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def quantize(x: torch.Tensor, amax: torch.Tensor | float, axis: int | None = None) -> torch.Tensor:
    """Integer grid values (as float) of symmetric int8 quantization with ``scale = amax / 127``."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        amax = amax.reshape(shape)
    return torch.clamp(torch.round(x.float() * (QMAX / amax)), -QMAX, QMAX)


def fake_quant(x: torch.Tensor, amax: torch.Tensor | float, axis: int | None = None) -> torch.Tensor:
    """``quantize`` then back to real values."""
    amax_t = torch.as_tensor(amax, dtype=torch.float32)
    scale = amax_t / QMAX
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
    return quantize(x, amax, axis) * scale


@dataclass
class SparseValue:
    """A sparse tensor between nodes: float32 features holding exactly what the runtime stores."""

    features: torch.Tensor
    sites: Sites
    precision: str  # "fp16" | "int8"


def load_scn(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(Path(model)))


class _Runner:
    def __init__(self, model: onnx.ModelProto, batch: int):
        self.graph = model.graph
        self.batch = batch
        self.inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float32)) for t in model.graph.initializer}
        self.readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.graph.node:
            for slot, name in enumerate(node.input):
                self.readers.setdefault(name, []).append((node, slot))
        self.rulebooks = RulebookCache()
        self.values: dict[str, object] = {}

    # -- output precision ----------------------------------------------------------------------
    def reader_ranges(self, name: str) -> list[tuple[str, float | None]]:
        """(reader name, the range it quantizes tensor ``name`` with, None for an fp16 reader)."""
        found: list[tuple[str, float | None]] = []
        for node, slot in self.readers.get(name, []):
            attrs = attributes(node)
            if node.op_type == "Relu":
                found += self.reader_ranges(node.output[0])
            elif node.op_type == "SparseConvolution" and slot == 0 and _text(attrs.get("precision")) == "int8":
                found.append((node.name, float(attrs["input_dynamic_range"])))
            elif node.op_type in ("Add", "QuantAdd") and _text(attrs.get("precision")) == "int8":
                found.append((node.name, float(attrs[f"input{slot}_dynamic_range"])))
            else:
                found.append((node.name, None))
        return found

    def store(self, node: onnx.NodeProto, attrs: dict, features: torch.Tensor, sites: Sites) -> SparseValue:
        if _text(attrs.get("output_precision", "fp16")) != "int8":
            return SparseValue(features.half().float(), sites, "fp16")
        ranges = self.reader_ranges(node.output[0])
        amaxes = {r for _, r in ranges}
        if not ranges or None in amaxes or len(amaxes) != 1:
            described = ", ".join(f"{n}: {'fp16' if r is None else f'{r:.6g}'}" for n, r in ranges) or "no reader"
            raise RecipeError(f"scn runtime: {node.name} writes an int8 output, but its readers do not quantize it "
                              f"with one int8 range ({described}); an int8 tensor has one scale")
        amax = amaxes.pop()
        return SparseValue(quantize(features, amax) * (amax / QMAX), sites, "int8")

    # -- nodes ---------------------------------------------------------------------------------
    def sparse_input(self, node: onnx.NodeProto, slot: int = 0) -> SparseValue:
        value = self.values[node.input[slot]]
        if not isinstance(value, SparseValue):
            raise RecipeError(f"scn runtime: {node.op_type} {node.name!r} reads the dense tensor {node.input[slot]}")
        return value

    def conv(self, node: onnx.NodeProto, attrs: dict) -> SparseValue:
        x = self.sparse_input(node)
        weight, bias = self.inits[node.input[1]], self.inits[node.input[2]]
        out_c, in_c = weight.shape[0], weight.shape[-1]
        if list(weight.shape[1:4]) != list(attrs["kernel_size"]) or x.features.shape[1] != in_c:
            raise RecipeError(f"scn runtime: {node.name} has weight {list(weight.shape)} for kernel "
                              f"{list(attrs['kernel_size'])} and {x.features.shape[1]} input channels")
        key = _text(attrs.get("rulebook", ""))
        if attrs.get("inverse"):
            book = self.rulebooks.inverse(node.name, x.sites, attrs, key)
        else:
            book = self.rulebooks.forward(node.name, x.sites, attrs, key)
        kernel = weight.reshape(out_c, -1, in_c)  # [O, K, I]
        if _text(attrs.get("precision")) == "int8":
            ranges = torch.tensor([float(r) for r in attrs["weight_dynamic_ranges"]])
            qx = quantize(x.features, float(attrs["input_dynamic_range"]))
            qw = quantize(kernel, ranges, axis=0)
            acc = _gather_gemm_scatter(qx, qw, book.pairs, len(book.outputs.indices), exact=True)
            scale = (float(attrs["input_dynamic_range"]) / QMAX) * (ranges.double() / QMAX)
            result = (acc * scale).float() + bias
        else:
            acc = _gather_gemm_scatter(x.features.half().float(), kernel.half().float(), book.pairs,
                                       len(book.outputs.indices))
            result = acc + bias
        if _text(attrs.get("activation", "None")) == "ReLU":
            result = torch.relu(result)
        return self.store(node, attrs, result, book.outputs)

    def add(self, node: onnx.NodeProto, attrs: dict) -> SparseValue:
        a, b = self.sparse_input(node, 0), self.sparse_input(node, 1)
        if a.features.shape != b.features.shape or not a.sites.same_as(b.sites):
            raise RecipeError(f"scn runtime: {node.name} adds sparse tensors at different sites")
        if a.precision != b.precision:
            raise RecipeError(f"scn runtime: {node.name} adds an {a.precision} and an {b.precision} tensor")
        fa, fb = a.features, b.features
        if _text(attrs.get("precision")) == "int8":
            r0, r1 = float(attrs["input0_dynamic_range"]), float(attrs["input1_dynamic_range"])
            fa, fb = quantize(fa, r0) * (r0 / QMAX), quantize(fb, r1) * (r1 / QMAX)
        return self.store(node, attrs, fa + fb, a.sites)

    def scatter(self, node: onnx.NodeProto, attrs: dict) -> torch.Tensor:
        x = self.sparse_input(node)
        shape = [int(s) for s in attrs["input_spatial_shape"]]
        if tuple(shape) != x.sites.shape:
            raise RecipeError(f"scn runtime: {node.name} expects spatial shape {shape}, its input has "
                              f"{list(x.sites.shape)}")
        channels = x.features.shape[1]
        out_shape = list(attrs.get("output_shape", [])) or [1, channels, *shape]
        if list(out_shape[1:]) != [channels, *shape]:
            raise RecipeError(f"scn runtime: {node.name} output_shape {list(out_shape)} does not fit "
                              f"{channels} channels x {shape}")
        dense = torch.zeros(self.batch, channels, *shape)
        idx = torch.from_numpy(x.sites.indices)
        dense[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]] = x.features.half().float()
        return dense

    def run(self, features: torch.Tensor, sites: Sites) -> list[torch.Tensor]:
        self.values[self.graph.input[0].name] = SparseValue(features.detach().float().cpu().half().float(), sites,
                                                            "fp16")
        last_read = {name: step for step, node in enumerate(self.graph.node) for name in node.input}
        last_book = {_text(attributes(node).get("rulebook", "")): step for step, node in enumerate(self.graph.node)
                     if node.op_type == "SparseConvolution"}
        kept = {o.name for o in self.graph.output}
        for step, node in enumerate(self.graph.node):
            attrs = attributes(node)
            op = node.op_type
            if op == "SparseConvolution":
                value: object = self.conv(node, attrs)
            elif op in ("Add", "QuantAdd"):
                value = self.add(node, attrs)
            elif op == "Relu":
                x = self.sparse_input(node)
                value = SparseValue(torch.relu(x.features), x.sites, x.precision)
            elif op == "ScatterDense":
                value = self.scatter(node, attrs)
            elif op == "Transpose":
                value = self.values[node.input[0]].permute(*attrs["dims"]).contiguous()
            elif op == "Reshape":
                dims = list(attrs["dims"])
                if dims and dims[0] == 1:
                    dims[0] = self.batch
                value = self.values[node.input[0]].reshape(dims)
            else:
                raise RecipeError(f"scn runtime: node type {op} is not part of the libspconv format")
            self.values[node.output[0]] = value
            for name in node.input:  # a tensor no later node reads is freed (the runtime's peak is one layer's)
                if last_read[name] == step and name not in kept:
                    self.values.pop(name, None)
            key = _text(attrs.get("rulebook", "")) if op == "SparseConvolution" else ""
            if key and last_book[key] == step:
                self.rulebooks.release(key)
        outputs = [self.values[o.name] for o in self.graph.output]
        if any(not isinstance(o, torch.Tensor) for o in outputs):
            raise RecipeError("scn runtime: a graph output is sparse; libspconv outputs come from ScatterDense")
        return outputs


def _gather_gemm_scatter(x: torch.Tensor, kernel: torch.Tensor, pairs: list[tuple[np.ndarray, np.ndarray]],
                         out_points: int, exact: bool = False) -> torch.Tensor:
    """sum over kernel offsets k: out[o] += kernel[:, k, :] @ x[i] for each pair (i, o) of offset k.

    Each output reads at most one input per offset (true of SubM, strided and inverse convs), so the
    pairs form a table [out_points, K] of input rows (a zero row where none); the sum is then a
    matmul of the gathered [rows, K*I] block with the [K*I, O] kernel, in chunks of rows.
    ``exact`` (integer-valued ``x`` and ``kernel`` in [-127, 127]): float32 matmuls over at most
    ``EXACT_FP32`` products each (every partial sum is an integer below 2**24, so exact), added in
    float64; the result is the exact integer accumulation, in float64.
    """
    out_c, taps, in_c = kernel.shape
    table = np.full((out_points, taps), x.shape[0], dtype=np.int64 if x.shape[0] >= 2**31 else np.int32)
    for k, (rows_in, rows_out) in enumerate(pairs):
        table[rows_out, k] = rows_in
    used = np.nonzero((table != x.shape[0]).any(0))[0]  # offsets that pair anything
    table = torch.from_numpy(np.ascontiguousarray(table[:, used]))
    wide = torch.float64 if exact and in_c > EXACT_FP32 else torch.float32
    padded = torch.cat([x, x.new_zeros(1, in_c)]).to(wide)
    matrix = kernel[:, torch.from_numpy(used), :].permute(1, 2, 0).reshape(-1, out_c).to(wide)
    group = len(used) * in_c if not exact or wide == torch.float64 else max(1, EXACT_FP32 // in_c) * in_c
    out = torch.zeros(out_points, out_c, dtype=torch.float64 if exact else torch.float32)
    step = max(1, CHUNK_ELEMENTS // max(1, len(used) * in_c))
    for start in range(0, out_points, step):
        block = padded.index_select(0, table[start:start + step].reshape(-1)).reshape(-1, len(used) * in_c)
        for col in range(0, block.shape[1], group):
            out[start:start + step] += (block[:, col:col + group] @ matrix[col:col + group]).to(out.dtype)
    return out


def run_scn(model: onnx.ModelProto | str | os.PathLike, features: torch.Tensor, indices: torch.Tensor,
            spatial_shape: Sequence[int], batch_size: int) -> list[torch.Tensor]:
    """Run a libspconv file on voxel ``features`` [N, C] at int ``indices`` [N, 4] (file's ``format`` order)."""
    sites = make_sites(indices.detach().cpu().numpy(), list(spatial_shape), int(batch_size))
    with torch.no_grad():
        return _Runner(load_scn(model), int(batch_size)).run(features, sites)


def swap_layout(indices: torch.Tensor, spatial_shape: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Indices/grid in the other coordinate order: columns 1 and 3 swapped, spatial shape reversed."""
    return indices[:, [0, 3, 2, 1]].contiguous(), list(reversed(list(spatial_shape)))
