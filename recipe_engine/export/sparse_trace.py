"""Trace a spconv module into a small graph of libspconv operations, without global patching.

While the module runs once on its captured inputs, and only then:
- forward pre/post hooks on every spconv convolution record one ``conv`` op per call (its
  input and output feature tensors, spatial shapes, index tensor) and hide what happens inside;
- forward hooks on op-site quantizers (add/cat inputs) record which quantizer each add input
  went through;
- a :class:`torch.overrides.TorchFunctionMode` sees every torch call made *between* those
  modules and turns the ones on traced feature tensors into ``add``, ``relu``, ``scatter``
  (``SparseConvTensor.dense()``'s scatter into a zero tensor), ``permute`` and ``reshape``
  ops; shape/metadata queries pass through; any other op on a traced tensor is an error
  naming the op and the module it ran in.
All hooks are removed and the mode is left when the trace ends (also on errors). Tensors are
followed by identity through weak references (:class:`_ById`), so intermediate features are freed
as in the plain forward. The trace keeps the graph's metadata, the dense outputs (not copied; the
scatter's dense is a view of them, :func:`.scn_tail.scatter_dense`) and a compact copy of each
conv's input indices (spconv's strided-conv indices are slices of buffers up to 27x larger).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..quant import backend, sparse
from ..quant.ops import SITES_ATTR
from ..recipe.errors import RecipeError

ADD_NAMES = {"add", "__add__", "__radd__", "__iadd__", "add_"}
RELU_NAMES = {"relu", "relu_"}
ALIAS_NAMES = {"contiguous", "clone", "detach", "float"}
RESHAPE_NAMES = {"view", "reshape"}


@dataclass
class Value:
    """A traced tensor: sparse features [N, C] or a dense tensor derived from a scatter."""

    index: int
    kind: str  # "sparse" | "dense"
    shape: tuple[int, ...]
    spatial_shape: list[int] | None = None  # sparse: the grid of its indices
    batch_size: int | None = None
    axes: list[str] | None = None  # dense: axis labels N, C, s0, s1, s2 in current order


@dataclass
class Op:
    kind: str  # "conv" | "add" | "relu" | "scatter" | "permute" | "reshape"
    inputs: list[int]
    output: int
    module: nn.Module | None = None
    path: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SparseTrace:
    """The traced graph of one call of a sparse module."""

    values: list[Value] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    input_value: int | None = None
    input_features: torch.Tensor | None = None
    indices: torch.Tensor | None = None  # int32 [N, 4] of the graph input's points
    spatial_shape: list[int] | None = None
    batch_size: int | None = None
    outputs: list[int] = field(default_factory=list)
    output_tensors: list[torch.Tensor] = field(default_factory=list)  # the module's dense outputs (detached)
    module_classes: dict[str, type] = field(default_factory=dict)  # path -> class of every traced submodule


def _first_sparse_or_features(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in list(args) + list(kwargs.values()):
        if sparse.is_sparse_tensor(value):
            return value.features
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 2:
            return value
    return None


class _ById:
    """``id(tensor) -> payload`` through weak references: a tensor's entry never keeps it alive, and
    an id that a freed tensor's successor reuses does not match the old entry (it is overwritten)."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, obj: Any) -> Any:
        hit = self.entries.get(id(obj))
        return hit[1] if hit is not None and hit[0]() is obj else None

    def set(self, tensor: torch.Tensor, payload: Any) -> None:
        self.entries[id(tensor)] = (weakref.ref(tensor), payload)


class _Tracer(TorchFunctionMode):
    """Follows feature tensors through the calls made between spconv modules.

    ``SparseConvTensor.dense()`` scatters the features into a zero tensor with ``__setitem__``;
    that scatter becomes the ``scatter`` op (ScatterDense).
    """

    def __init__(self, root_path: str):
        super().__init__()
        self.trace = SparseTrace()
        self.tensors = _ById()  # tensor -> value index
        self.quantized = _ById()  # tensor -> the op-site quantizer it came out of
        self.compact: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (conv input indices, compact copy)
        self.depth = 0
        self.stack: list[str] = [root_path or "<model>"]
        self.conv_calls: dict[int, int] = {}
        self.pending: dict[int, tuple[Any, int]] = {}  # conv module id -> (its input, input value) during its call

    # -- values ---------------------------------------------------------------------------
    def new_value(self, tensor: torch.Tensor, kind: str, **info: Any) -> int:
        value = Value(len(self.trace.values), kind, tuple(tensor.shape), **info)
        self.trace.values.append(value)
        self.bind(tensor, value.index)
        return value.index

    def bind(self, tensor: torch.Tensor, index: int) -> None:
        self.tensors.set(tensor, index)

    def lookup(self, obj: Any) -> int | None:
        return self.tensors.get(obj) if isinstance(obj, torch.Tensor) else None

    def compact_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """A copy of ``indices`` owning only its rows (one per tensor, so ``a is b`` still means the same call)."""
        hit = self.compact.get(id(indices))
        if hit is None or hit[0] is not indices:
            hit = self.compact[id(indices)] = (indices, indices.clone())  # the original held for the trace only
        return hit[1]

    def value(self, index: int) -> Value:
        return self.trace.values[index]

    def where(self) -> str:
        return self.stack[-1]

    def fail(self, message: str, hint: str | None = None) -> RecipeError:
        return RecipeError(f"onnx-sparse: {message} (in {self.where()})", hint=hint)

    # -- module hooks -------------------------------------------------------------------------
    def enter_module(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            self.stack.append(path)
        return hook

    def leave_module(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.stack.pop()

    def conv_pre(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            self.depth += 1
            if self.depth > 1:
                return
            x = args[0] if args else None
            if not sparse.is_sparse_tensor(x):
                raise self.fail(f"{path} was called with {type(x).__name__}, not a SparseConvTensor")
            index = self.lookup(x.features)
            if index is None:
                raise self.fail(f"the input features of {path} come from an operation the exporter did not see",
                                hint="only spconv convolutions, +, relu and .dense() can be exported")
            if self.trace.indices is None:
                self.trace.indices = x.indices
                self.trace.spatial_shape = list(x.spatial_shape)
                self.trace.batch_size = int(x.batch_size)
            self.pending[id(module)] = (x, index)
        return hook

    def conv_post(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self.depth -= 1
            if self.depth > 0:
                return
            x, index = self.pending.pop(id(module))
            if not sparse.is_sparse_tensor(output):
                raise self.fail(f"{path} returned {type(output).__name__}, not a SparseConvTensor")
            calls = self.conv_calls.get(id(module), 0)
            self.conv_calls[id(module)] = calls + 1
            out = self.new_value(output.features, "sparse", spatial_shape=list(output.spatial_shape),
                                 batch_size=int(output.batch_size))
            self.trace.ops.append(Op("conv", [index], out, module, path, {
                "call": calls, "in_spatial": list(x.spatial_shape), "out_spatial": list(output.spatial_shape),
                "in_points": int(x.features.shape[0]), "out_points": int(output.features.shape[0]),
                "in_indices": self.compact_indices(x.indices)}))
        return hook

    def quantizer_pre(self, module: nn.Module, args: tuple) -> None:
        self.depth += 1

    def quantizer_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.depth -= 1
        if self.depth > 0 or not args:
            return
        index = self.lookup(args[0])
        if index is not None and isinstance(output, torch.Tensor) and output is not args[0]:
            self.bind(output, index)
            self.quantized.set(output, module)
        elif index is not None and output is args[0] and not backend.is_enabled(module):
            if self.quantized.get(output) is None:  # a disabled site: its calibrated range
                self.quantized.set(output, module)

    # -- torch functions between modules ---------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "__setitem__" and self.depth == 0 and len(args) == 3:
            target, _, source = args
            if self.lookup(target) is not None:
                raise self.fail("item assignment into a traced tensor cannot be expressed in the libspconv format")
            index = self.lookup(source)
            if index is not None:
                return self.on_scatter(func, args, kwargs, index)
        result = func(*args, **kwargs)
        if self.depth > 0:
            return result
        traced = [a for a in _tensor_args(args, kwargs) if self.lookup(a) is not None]
        if not traced:
            return result
        name = getattr(func, "__name__", str(func))
        if not _has_tensor(result):
            return result  # shape, dtype, device, dim() ... queries
        handler = {"add": self.on_add, "relu": self.on_relu, "alias": self.on_alias, "reshape": self.on_reshape,
                   "permute": self.on_permute, "transpose": self.on_transpose}.get(_kind(name))
        if handler is None:
            kinds = sorted({self.value(self.lookup(a)).kind for a in traced})
            raise self.fail(f"`{name}` on traced {'/'.join(kinds)} features cannot be expressed in the libspconv "
                            "format", hint="supported between spconv layers: +, relu, .dense(), permute, view/reshape; "
                            "fold BatchNorm into the convs with a `fuse:` entry")
        handler(name, args, kwargs, result)
        return result

    def on_add(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        if len(args) < 2 or kwargs.get("alpha", 1) != 1:
            raise self.fail(f"`{name}` with alpha or a single operand is not supported")
        a, b = self.lookup(args[0]), self.lookup(args[1])
        if a is None or b is None:
            raise self.fail(f"`{name}` adds a traced tensor and an untraced value; libspconv adds two sparse tensors")
        va, vb = self.value(a), self.value(b)
        if va.kind != "sparse" or vb.kind != "sparse":
            raise self.fail(f"`{name}` on dense tensors is not part of the libspconv format")
        if va.shape != vb.shape:
            raise self.fail(f"`{name}` of sparse tensors with shapes {va.shape} and {vb.shape}")
        quantizers = [self.quantized.get(t) for t in args[:2]]
        out = self.new_value(result, "sparse", spatial_shape=va.spatial_shape, batch_size=va.batch_size)
        self.trace.ops.append(Op("add", [a, b], out, path=self.where(), info={"quantizers": quantizers}))

    def on_relu(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        source = self.value(self.lookup(args[0]))
        if source.kind != "sparse":
            raise self.fail("relu on a dense tensor is not part of the libspconv format")
        out = self.new_value(result, "sparse", spatial_shape=source.spatial_shape, batch_size=source.batch_size)
        self.trace.ops.append(Op("relu", [source.index], out, path=self.where()))

    def on_alias(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        source = self.lookup(args[0])
        if isinstance(result, torch.Tensor) and result.dtype == args[0].dtype and result.shape == args[0].shape:
            self.bind(result, source)
        else:
            raise self.fail(f"`{name}` changes the dtype or shape of traced features")

    def on_reshape(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        index = self.lookup(args[0])
        source = self.value(index)
        if tuple(result.shape) == source.shape:
            self.bind(result, index)
            return
        if source.kind != "dense" or source.axes is None:
            raise self.fail(f"`{name}` reshapes sparse features {source.shape} -> {tuple(result.shape)}")
        out = self.new_value(result, "dense")
        self.trace.ops.append(Op("reshape", [index], out, path=self.where(), info={"shape": list(result.shape)}))

    def on_permute(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        dims = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else kwargs.get("dims"))
        self._permute(args[0], [int(d) for d in dims], result, name)

    def on_transpose(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        source = self.lookup(args[0])
        rank = len(self.value(source).shape)
        d0, d1 = (int(d) % rank for d in args[1:3])
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        self._permute(args[0], perm, result, name)

    def _permute(self, tensor: torch.Tensor, perm: list[int], result: Any, name: str) -> None:
        index = self.lookup(tensor)
        source = self.value(index)
        if source.kind != "dense" or source.axes is None:
            raise self.fail(f"`{name}` on sparse features or on a reshaped dense tensor is not supported")
        perm = [p % len(source.axes) for p in perm]
        out = self.new_value(result, "dense", axes=[source.axes[p] for p in perm])
        self.trace.ops.append(Op("permute", [index], out, path=self.where(), info={"perm": perm}))

    def on_scatter(self, func, args: tuple, kwargs: dict, index: int):
        target, _, source = args
        value = self.value(index)
        if value.kind != "sparse":
            raise self.fail("item assignment from a dense traced tensor is not supported")
        if bool(target.any()):
            raise self.fail("sparse features are scattered into a non-zero tensor")
        expected = (value.batch_size, *value.spatial_shape, value.shape[1])
        if tuple(target.shape) != expected:
            raise self.fail(f"scatter target has shape {tuple(target.shape)}, expected {expected} "
                            "([batch, *spatial_shape, channels], as SparseConvTensor.dense() makes it)")
        result = func(*args, **kwargs)
        out = self.new_value(target, "dense", axes=["N", "s0", "s1", "s2", "C"])
        self.trace.ops.append(Op("scatter", [index], out, path=self.where(), info={
            "spatial_shape": list(value.spatial_shape), "channels": int(value.shape[1]),
            "batch_size": int(value.batch_size)}))
        return result


def _kind(name: str) -> str | None:
    if name in ADD_NAMES:
        return "add"
    if name in RELU_NAMES:
        return "relu"
    if name in ALIAS_NAMES:
        return "alias"
    if name in RESHAPE_NAMES:
        return "reshape"
    if name in ("permute", "transpose"):
        return name
    return None


def _tensor_args(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors in ``args`` and ``kwargs``' values, nested lists/tuples included.

    A loop, not a recursive closure: a closure that calls itself is a reference cycle, and the
    list it fills (every torch call's tensors) would live until the next garbage collection.
    """
    found: list[torch.Tensor] = []
    stack: list[Any] = [list(kwargs.values()), args]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed(value))
    return found


def _has_tensor(value: Any) -> bool:
    return bool(_tensor_args((value,), {}))


def trace_sparse(module: nn.Module, path: str, args: tuple, kwargs: dict[str, Any],
                 runner: nn.Module | None = None) -> SparseTrace:
    """Run ``module(*args, **kwargs)`` once and return its libspconv-level graph.

    ``runner`` (default ``module``) is what is called, e.g. a :class:`.calls.TensorCall` that
    puts plain tensors into ``module``'s dict inputs; the hooks go on ``module``.
    """
    features = _first_sparse_or_features(args, kwargs)
    if features is None:
        raise RecipeError(f"onnx-sparse: {path or 'the model'} takes no voxel features "
                          "(a SparseConvTensor or a float [N, C] tensor)")
    tracer = _Tracer(path)
    tracer.trace.input_value = tracer.new_value(features, "sparse")
    tracer.trace.input_features = features
    handles = []
    try:
        for name, child in module.named_modules():
            full = f"{path}.{name}" if path and name else (name or path)
            tracer.trace.module_classes[full] = type(child)
            if sparse.is_sparse_conv(child):
                handles.append(child.register_forward_pre_hook(tracer.conv_pre(full)))
                handles.append(child.register_forward_hook(tracer.conv_post(full)))
            elif name:
                handles.append(child.register_forward_pre_hook(tracer.enter_module(full)))
                handles.append(child.register_forward_hook(tracer.leave_module))
            sites = getattr(child, SITES_ATTR, None)
            if sites is not None:
                for quantizer in sites.values():
                    handles.append(quantizer.register_forward_pre_hook(tracer.quantizer_pre))
                    handles.append(quantizer.register_forward_hook(tracer.quantizer_post))
        with torch.no_grad(), tracer:
            output = (runner or module)(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    trace = tracer.trace
    for tensor in _tensor_args((output,), {}):
        index = tracer.lookup(tensor)
        if index is None or trace.values[index].kind != "dense":
            raise RecipeError(f"onnx-sparse: {path or 'the model'} returns a tensor that is not a traced dense "
                              "output (libspconv outputs come from SparseConvTensor.dense())")
        trace.outputs.append(index)
        trace.output_tensors.append(tensor.detach())
    if sparse.is_sparse_tensor(output) or (isinstance(output, (list, tuple))
                                           and any(sparse.is_sparse_tensor(o) for o in output)):
        raise RecipeError(f"onnx-sparse: {path or 'the model'} returns a SparseConvTensor; the format's outputs "
                          "are dense", hint="export a module that ends with .dense()")
    if not trace.outputs:
        raise RecipeError(f"onnx-sparse: {path or 'the model'} returns no dense tensor")
    if not any(op.kind == "conv" for op in trace.ops):
        raise RecipeError(f"onnx-sparse: {path or 'the model'} runs no spconv convolution")
    return trace
