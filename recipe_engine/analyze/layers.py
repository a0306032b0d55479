"""Per-layer output SQNR vs FP32: where the quantization error enters and how it grows.

One batch runs twice through the quantized model: once with every quantizer off (the FP32
reference; BatchNorm is already folded, which changes nothing but rounding) and once as
calibrated (disabled quantizers stay off). For every quantized layer (a module owning an
``input``/``weight`` quantizer) and every op site (``add``/``cat`` inside a module's forward)
the SQNR of its input and of its output in the quantized run is measured against the same
tensor of the FP32 run, in execution order. ``output - input`` is what this layer itself
cost; a disabled layer after a quantized one shows the inherited error, a disabled first layer
an identical output (``inf``).

Sparse tensors (spconv) are compared on their features at the same active sites (the same
indices; when the index order differs the sites are matched by coordinates, and sites present
in one run only are counted but not compared). A module called several times per forward is
compared call by call; the figure covers all its calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..quant import backend, ops, sparse
from ..quant.apply import get_state
from .sensitivity import all_quantizers_off


@dataclass
class _Power:
    """Accumulated signal and noise energy of one measured tensor position."""

    signal: float = 0.0
    noise: float = 0.0
    elements: int = 0
    unmatched: int = 0  # sparse sites present in one run only

    def add(self, reference: Any, approx: Any) -> None:
        for ref, app, missing in _pairs(reference, approx):
            if ref.shape != app.shape:
                continue
            ref, app = ref.detach().float().reshape(-1), app.detach().float().reshape(-1)
            diff = ref - app
            self.signal += float(torch.dot(ref, ref))  # BLAS dot: float32 products, blocked sums (~1e-6 relative)
            self.noise += float(torch.dot(diff, diff))
            self.elements += ref.numel()
            self.unmatched += missing

    def db(self) -> float:
        if self.elements == 0:
            return math.nan
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)


@dataclass
class LayerSqnr:
    """One quantized layer or op site: SQNR (dB) vs FP32 of what it read and what it produced."""

    index: int  # execution order (first call)
    name: str  # module path, or the op site's quantizer name
    kind: str  # layer | op
    type: str  # module class, or add / cat
    quantized: bool  # any of its quantizers enabled
    input_db: float
    output_db: float
    calls: int
    elements: int
    unmatched_sites: int = 0

    @property
    def loss_db(self) -> float:
        """SQNR lost inside this layer (input - output); nan when either is not finite."""
        if math.isfinite(self.input_db) and math.isfinite(self.output_db):
            return self.input_db - self.output_db
        return math.nan

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: infinite SQNR (identical to FP32) is null with ``identical: true``."""
        return {"index": self.index, "name": self.name, "kind": self.kind, "type": self.type,
                "quantized": self.quantized, "input_db": _json_db(self.input_db), "output_db": _json_db(self.output_db),
                "loss_db": _json_db(self.loss_db), "identical": self.output_db == math.inf,
                "input_identical": self.input_db == math.inf, "calls": self.calls,
                "elements": self.elements, "unmatched_sites": self.unmatched_sites}


def _json_db(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


# ----------------------------------------------------------------------------- tensor pairing
def _tensors(value: Any) -> list[Any]:
    """The float tensors and sparse tensors in a module's input or output, in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if sparse.is_sparse_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value, key=str) for t in _tensors(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _pairs(reference: list[Any], approx: list[Any]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    pairs = []
    for ref, app in zip(reference, approx, strict=False):
        if isinstance(ref, torch.Tensor) and isinstance(app, torch.Tensor):
            pairs.append((ref, app, 0))
        elif sparse.is_sparse_tensor(ref) and sparse.is_sparse_tensor(app):
            pairs.append(_sparse_pair(ref, app))
    return pairs


def _sparse_pair(ref: Any, app: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Features of the active sites both tensors have, in the same order."""
    if ref.indices.shape == app.indices.shape and torch.equal(ref.indices, app.indices):
        return ref.features, app.features, 0
    both = torch.cat([ref.indices, app.indices]).long()
    spans = both.amax(0) + 1 if len(both) else torch.ones(both.shape[1], dtype=torch.long)
    ref_keys, app_keys = _site_keys(ref.indices, spans), _site_keys(app.indices, spans)
    order = torch.argsort(app_keys)
    sorted_keys = app_keys[order]
    if len(sorted_keys) == 0:
        return ref.features[:0], app.features[:0], len(ref_keys)
    position = torch.searchsorted(sorted_keys, ref_keys).clamp(max=len(sorted_keys) - 1)
    found = sorted_keys[position] == ref_keys
    matched = int(found.sum())
    return ref.features[found], app.features[order[position[found]]], len(ref_keys) + len(app_keys) - 2 * matched


def _site_keys(indices: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """One int64 per site (batch, spatial...): the coordinates in a mixed radix shared by both runs."""
    key = torch.zeros(len(indices), dtype=torch.long)
    for column in range(indices.shape[1]):
        key = key * int(spans[column]) + indices[:, column].long()
    return key


# ----------------------------------------------------------------------------- measurement
@dataclass
class _Recorder:
    """Records (FP32 pass) or compares (quantized pass) what each watched position saw, per call."""

    comparing: bool = False
    reference: dict[tuple[str, str, int], list[Any]] = field(default_factory=dict)
    power: dict[tuple[str, str], _Power] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def start(self, name: str) -> int:
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        if name not in self.order:
            self.order.append(name)
        return call

    def see(self, name: str, where: str, call: int, value: Any) -> None:
        found = _tensors(value)
        if not self.comparing:  # cloned: later in-place ops (ReLU(inplace), `out += x`) must not change it
            self.reference[(name, where, call)] = [_clone(t) for t in found]
            return
        kept = self.reference.get((name, where, call))
        if kept is not None:
            self.power.setdefault((name, where), _Power()).add(kept, found)

    def reset_calls(self) -> None:
        self.calls = {}


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return value.replace_feature(value.features.detach().clone())


def _watch_layer(module: nn.Module, name: str, recorder: _Recorder) -> list:
    calls: list[int] = []

    def before(_module: nn.Module, args: tuple) -> None:
        calls.append(recorder.start(name))
        recorder.see(name, "input", calls[-1], args)

    def after(_module: nn.Module, args: tuple, output: Any) -> None:
        if calls:
            recorder.see(name, "output", calls.pop(), output)

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


class _WatchSites:
    """Wraps one owner's op-site call (an instance attribute, removed afterwards) to see each site's operands and result."""

    def __init__(self, hooks: ops.OpSiteHooks, names: dict[str, str], recorder: _Recorder):
        self.hooks, self.names, self.recorder = hooks, names, recorder
        self.original = hooks.call
        hooks.call = self.call  # type: ignore[method-assign]

    def call(self, site: str, kind: str, func: Callable, args: tuple, kwargs: dict) -> Any:
        name = self.names.get(site)
        if name is None:
            return self.original(site, kind, func, args, kwargs)
        call = self.recorder.start(name)
        self.recorder.see(name, "input", call, args[0] if kind == "cat" and args else args[:2])  # before `+=` writes
        result = self.original(site, kind, func, args, kwargs)
        self.recorder.see(name, "output", call, result)
        return result

    def remove(self) -> None:
        del self.hooks.call


def measure_layers(model: nn.Module, batch: Any, forward: Callable) -> list[LayerSqnr]:
    """SQNR vs FP32 of every quantized layer's and op site's input and output on ``batch``, in execution order."""
    state = get_state(model)
    layers: dict[str, list[Any]] = {}  # module path -> its input/weight quantizers
    sites: dict[str, dict[str, str]] = {}  # owner path -> {site: quantizer name}
    site_quantizer: dict[str, Any] = {}
    for name, quantizer in state.quantizers.items():
        owner = state.owners[name]
        leaf = name[len(owner) + 1:] if owner else name
        if leaf in ("input", "weight"):
            layers.setdefault(owner, []).append(quantizer)
        else:
            sites.setdefault(owner, {})[leaf] = name
            site_quantizer[name] = quantizer
    modules = dict(model.named_modules())
    recorder = _Recorder()
    handles: list = []
    wrappers: list[_WatchSites] = []
    try:
        for path in layers:
            handles += _watch_layer(modules[path], path, recorder)
        for owner, names in sites.items():
            hooks = ops.op_hooks(modules[owner])
            if hooks is not None:
                wrappers.append(_WatchSites(hooks, names, recorder))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                with all_quantizers_off(model):
                    forward(model, batch)
                recorder.comparing = True
                recorder.reset_calls()
                forward(model, batch)
        finally:
            model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
        for wrapper in wrappers:
            wrapper.remove()
    results = []
    types = {path: type(modules[path]).__name__ for path in layers}
    for index, name in enumerate(recorder.order):
        is_layer = name in layers
        quantizers = layers[name] if is_layer else [site_quantizer[name]]
        out = recorder.power.get((name, "output"), _Power())
        results.append(LayerSqnr(
            index, name, "layer" if is_layer else "op",
            types[name] if is_layer else name.rsplit(".", 1)[-1].rstrip("0123456789"),
            any(backend.is_enabled(q) for q in quantizers),
            recorder.power.get((name, "input"), _Power()).db(), out.db(), recorder.calls.get(name, 0),
            out.elements, out.unmatched))
    return results


def describe(layers: list[LayerSqnr]) -> str:
    """``41 layers/op sites, worst output bev.neck.cat0 29.55 dB``: the stage line's figure."""
    finite = [item for item in layers if math.isfinite(item.output_db)]
    if not finite:
        return f"{len(layers)} layers/op sites"
    worst = min(finite, key=lambda item: item.output_db)
    return f"{len(layers)} layers/op sites, worst output {worst.name} {worst.output_db:.2f} dB"
