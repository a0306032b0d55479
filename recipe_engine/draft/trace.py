"""Trace one batch through a model and record its dataflow, for ``recipe init``.

During one forward (``data.forward(model, batch)``, no gradients, model in eval mode):
- forward pre/post hooks on every module record each call: its path, the values it received
  (tensors, and the features of spconv ``SparseConvTensor`` arguments) and, for leaf modules,
  the values it produced;
- one :class:`torch.overrides.TorchFunctionMode` sees every torch call made in between. The
  ``+``/``add``/in-place add and ``torch.cat`` calls the engine quantizes (two or more floating
  tensors, see :mod:`recipe_engine.quant.ops`) become op sites named as the engine names them:
  ``<owner>.add0``, ``<owner>.cat1`` (numbered per kind in execution order within one call of
  the innermost module whose forward runs them). Every other call just passes on which
  quantizable layers its result came from (to find the layers whose output is the model's).
Tensors are followed by identity; references are kept for the trace's lifetime so ids stay
unique. All hooks are removed and the mode is left when the trace ends, also on errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..quant import sparse
from ..quant.ops import OP_KINDS

_KIND_OF = {name: kind for kind, names in OP_KINDS.items() for name in names}
_PASS_THROUGH = (nn.Identity, nn.Dropout)
DENSE_LAYERS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear")


def layer_kind(module: nn.Module) -> str | None:
    """"sparse" (spconv convolution), "dense" (a torch.nn conv/linear the engine quantizes) or None."""
    if sparse.is_sparse_conv(module):
        return "sparse"
    if type(module).__name__ in DENSE_LAYERS and type(module).__module__.startswith("torch.nn"):
        return "dense"
    return None


def is_library_class(module: nn.Module) -> bool:
    """torch.nn / spconv classes: their own forwards are not the user's op sites."""
    name = type(module).__module__
    return name.startswith(("torch.", "spconv.", "pytorch_quantization.", "modelopt."))


@dataclass
class Call:
    """One call of one module."""

    index: int
    path: str
    module: nn.Module
    inputs: list[int]
    outputs: list[int] = field(default_factory=list)
    parent: int | None = None


@dataclass
class Site:
    """One add/cat op site, named as the engine names it."""

    owner: str
    name: str  # add0, cat1, ...
    kind: str
    operands: list[int]
    result: int

    @property
    def quantizer(self) -> str:
        return f"{self.owner}.{self.name}" if self.owner else self.name


@dataclass
class Trace:
    """What one forward did: calls, op sites, who produced and who read each value."""

    calls: list[Call] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    producer: dict[int, str] = field(default_factory=dict)  # value -> leaf module path or site quantizer name
    sources: dict[int, frozenset[str]] = field(default_factory=dict)  # value -> quantizable layers it came from
    outputs: list[int] = field(default_factory=list)  # values of the forward's return value
    loose_sites: list[str] = field(default_factory=list)  # add/cat run outside any module's forward
    alive: dict = field(default_factory=dict, repr=False)  # the traced tensors, kept so that ids stay unique

    def leaf_calls(self) -> list[Call]:
        return [c for c in self.calls if not c.module._modules]

    def executed(self) -> set[str]:
        return {c.path for c in self.calls}


def _tensors(value: Any, out: list[torch.Tensor], depth: int = 0) -> list[torch.Tensor]:
    """The tensors in ``value`` (nested lists/tuples/dicts; a SparseConvTensor gives its features)."""
    if depth > 6:
        return out
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif sparse.is_sparse_tensor(value):
        out.append(value.features)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensors(item, out, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _tensors(item, out, depth + 1)
    return out


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.trace = Trace()
        self.values: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor kept alive, value)
        self.count = 0
        self.stack: list[tuple[Call, dict[str, int]]] = []
        self.handles = []
        self.kinds = {path: layer_kind(m) for path, m in model.named_modules()}
        for path, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre(path), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(path), with_kwargs=True, always_call=True))

    # -- values -----------------------------------------------------------------------------
    def value_of(self, tensor: torch.Tensor) -> int:
        hit = self.values.get(id(tensor))
        if hit is not None and hit[0] is tensor:
            return hit[1]
        return self.bind(tensor, "", frozenset())

    def bind(self, tensor: torch.Tensor, producer: str, sources: frozenset[str]) -> int:
        self.count += 1
        self.values[id(tensor)] = (tensor, self.count)
        if producer:
            self.trace.producer[self.count] = producer
        self.trace.sources[self.count] = sources
        return self.count

    # -- module hooks -----------------------------------------------------------------------
    def _pre(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs = [self.value_of(t) for t in _tensors((args, kwargs), [])]
            parent = self.stack[-1][0].index if self.stack else None
            call = Call(len(self.trace.calls), path, module, inputs, parent=parent)
            self.trace.calls.append(call)
            self.stack.append((call, {}))
        return hook

    def _post(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if not self.stack or self.stack[-1][0].path != path:
                return
            call, _ = self.stack.pop()
            tensors = _tensors(output, [])
            if not module._modules and not isinstance(module, _PASS_THROUGH):
                kind = self.kinds.get(path)
                for tensor in tensors:
                    inherited = frozenset({path}) if kind else self._sources_of(call.inputs)
                    self.bind(tensor, path, inherited)
            call.outputs = [self.value_of(t) for t in tensors]
        return hook

    def _sources_of(self, values: list[int]) -> frozenset[str]:
        found: set[str] = set()
        for value in values:
            found |= self.trace.sources.get(value, frozenset())
        return frozenset(found)

    # -- torch calls ------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        site = self._site(name, args, kwargs)
        before = {id(t) for t in _tensors((args, kwargs), [])} if site is None else set()
        operand_values = [self.value_of(t) for t in site[1]] if site else []
        result = func(*args, **kwargs)
        if site is not None:
            kind, _ = site
            if self.stack:
                call, counters = self.stack[-1]
                index = counters.get(kind, 0)
                counters[kind] = index + 1
                owner = call.path
                entry = Site(owner, f"{kind}{index}", kind, operand_values, 0)
                qualified = entry.quantizer
                if isinstance(result, torch.Tensor):
                    entry.result = self.bind(result, qualified, self._sources_of(operand_values))
                self.trace.sites.append(entry)
            else:
                self.trace.loose_sites.append(f"{kind} in data.forward")
            return result
        outs = _tensors(result, [])
        if outs:
            sources = self._sources_of([self.values[i][1] for i in before if i in self.values])
            for tensor in outs:
                if id(tensor) not in before or name.endswith("_"):
                    self.bind(tensor, "", sources)
        return result

    @staticmethod
    def _site(name: str, args: tuple, kwargs: dict) -> tuple[str, list[torch.Tensor]] | None:
        kind = _KIND_OF.get(name)
        floats = lambda v: isinstance(v, torch.Tensor) and v.is_floating_point()  # noqa: E731
        if kind == "add":
            if len(args) >= 2 and floats(args[0]) and floats(args[1]):
                return kind, [args[0], args[1]]
        elif kind == "cat":
            tensors = args[0] if args else kwargs.get("tensors")
            if isinstance(tensors, (list, tuple)) and len(tensors) >= 2 and all(floats(t) for t in tensors):
                return kind, list(tensors)
        return None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def trace_model(model: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any]) -> Trace:
    """Run ``forward(model, batch)`` once in eval mode without gradients and record its dataflow."""
    recorder = _Recorder(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            output = forward(model, batch)
        recorder.trace.outputs = [recorder.value_of(t) for t in _tensors(output, [])]
    finally:
        recorder.close()
        model.train(was_training)
    recorder.trace.alive = recorder.values
    return recorder.trace
