"""What a PTQ step works with: the calibrated model, its FP32 reference, the data, and captures.

:class:`PtqContext` is handed to every step. It holds the quantized model and its
:class:`~recipe_engine.quant.apply.QuantState`, the calibration batches, the forward adapter, the
recipe's calibration settings and an FP32 *reference*: a copy of the model taken before the first
step with every quantizer switched off (steps that change the FP32 function's internals, such as
CLE, refresh it). :func:`capture` records the inputs and outputs of named modules on a few
batches, stopping each forward as soon as the last of them has run.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..quant import backend, sparse
from ..quant.apply import QuantState, get_state
from ..recipe.errors import RecipeError
from ..select import match_any


@dataclass
class Layer:
    """A quantized conv/linear layer (dense or spconv) of the model."""

    name: str
    module: nn.Module

    @property
    def is_sparse(self) -> bool:
        return sparse.is_sparse_conv(self.module)

    def quantizer(self, role: str) -> nn.Module | None:
        return backend.module_quantizer(self.module, role)

    def channel_dim(self) -> int:
        """Axis of the output channels in the layer's output tensor (features for spconv)."""
        return -1 if self.is_sparse or self.module.weight.dim() == 2 else 1


@dataclass
class Record:
    """One call of a module: its arguments and (a copy of) its output."""

    args: tuple
    kwargs: dict
    output: Any


@dataclass
class PtqContext:
    model: nn.Module
    batches: list
    forward: Callable[[nn.Module, Any], Any]
    calibration: Any  # the recipe's CalibrationSection
    block_types: tuple[type, ...] = ()
    show_progress: bool = True
    label: str = "ptq"  # recipe key of the running step, for errors
    reference: nn.Module | None = None
    _order: list[str] = field(default_factory=list)

    @property
    def state(self) -> QuantState:
        return get_state(self.model)

    def refresh_reference(self) -> None:
        """Make the FP32 reference a copy of the model as it is now, every quantizer off."""
        self.reference = fp32_copy(self.model)

    def data(self, count: int) -> list:
        return self.batches[:count]

    def method_of(self, quantizer: nn.Module) -> str:
        return self.state.settings_of(quantizer).method or self.calibration.method

    def layers(self, settings: Any, role: str = "weight") -> list[Layer]:
        """Quantized layers with an enabled ``role`` quantizer, in execution order, filtered by ``settings``."""
        found = []
        for name, module in self.model.named_modules():
            if not name or not hasattr(module, "weight") or not isinstance(module.weight, torch.Tensor):
                continue
            quantizer = backend.module_quantizer(module, role)
            if quantizer is None or not backend.is_enabled(quantizer):
                continue
            found.append(Layer(name, module))
        patterns = settings.layers
        if patterns is not None:
            patterns = [patterns] if isinstance(patterns, str) else list(patterns)
            for pattern in patterns:
                if not any(match_any(pattern, layer.name) for layer in found):
                    raise RecipeError(f"{self.label}.layers: {pattern!r} matches no layer with an enabled {role} "
                                      "quantizer", hint="nearest: " + ", ".join(_nearest(pattern, found)))
            found = [layer for layer in found if match_any(patterns, layer.name)]
        if settings.exclude is not None:
            found = [layer for layer in found if not match_any(settings.exclude, layer.name)]
        order = {name: i for i, name in enumerate(self.execution_order())}
        return sorted(found, key=lambda layer: order.get(layer.name, len(order)))

    def execution_order(self) -> list[str]:
        """Module paths in the order their forwards first run on one batch."""
        if not self._order:
            seen: dict[str, None] = {}
            handles = [m.register_forward_pre_hook(lambda _m, _a, n=name: seen.setdefault(n, None))
                       for name, m in self.model.named_modules() if name]
            try:
                with torch.no_grad():
                    self.forward(self.model, self.batches[0])
            finally:
                for handle in handles:
                    handle.remove()
            self._order = list(seen)
        return self._order


def _nearest(pattern: str, layers: Sequence[Layer]) -> list[str]:
    import difflib

    names = [layer.name for layer in layers]
    return difflib.get_close_matches(pattern.removeprefix("re:"), names, n=4, cutoff=0.3) or names[:4]


def fp32_copy(model: nn.Module) -> nn.Module:
    """A deep copy of a quantized model with every quantizer of the copy switched off."""
    reference = copy.deepcopy(model)
    for _, quantizer in get_state(reference).unique():
        backend.set_enabled(quantizer, False)
    reference.eval()
    return reference


def outputs_of(value: Any) -> torch.Tensor:
    """The tensor a layer or block output is compared on: the features of a sparse tensor (active voxels);
    for a block returning several tensors (an FPN's list of maps), all of them flattened and concatenated
    in :func:`flat_tensors` order, so the relative error weighs each map by its energy."""
    if sparse.is_sparse_tensor(value):
        return value.features
    if isinstance(value, torch.Tensor):
        return value
    tensors = flat_tensors(value) if isinstance(value, (list, tuple, dict)) else []
    if not tensors:
        raise TypeError(f"cannot compare an output of type {type(value).__name__} (no floating tensors in it)")
    return torch.cat([t.reshape(-1) for t in tensors])


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """Every floating tensor in a (nested) model output, in a fixed order."""
    if sparse.is_sparse_tensor(value):
        return [value.features]
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [t for key in sorted(value, key=str) for t in flat_tensors(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in flat_tensors(item)]
    return []


def _copied(value: Any) -> Any:
    if sparse.is_sparse_tensor(value):
        return value.replace_feature(value.features.detach().clone())
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


class _Stop(Exception):
    """Raised by a capture hook once every module it waits for has run (ends the forward early)."""


def capture(model: nn.Module, forward: Callable, batches: Sequence, names: Sequence[str], *,
            stop: bool = True, what: str = "ptq") -> dict[str, list[Record]]:
    """The first call of each module in ``names`` on each batch (arguments and output, copied)."""
    modules = dict(model.named_modules())
    records: dict[str, list[Record]] = {name: [] for name in names}
    waiting: set[str] = set()

    def hook(name: str) -> Callable:
        def record(_module, args, kwargs, output):
            if name in waiting:
                records[name].append(Record(_copied(args), _copied(kwargs), _copied(output)))
                waiting.discard(name)
                if stop and not waiting:
                    raise _Stop
        return record

    handles = [modules[name].register_forward_hook(hook(name), with_kwargs=True) for name in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                waiting.update(names)
                try:
                    forward(model, batch)
                except _Stop:
                    pass
                if waiting:
                    raise RecipeError(f"{what}: {sorted(waiting)[0]} did not run on calibration batch {index}")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return records


def run_module(module: nn.Module, record: Record) -> Any:
    """Call ``module`` again on the arguments of a recorded call."""
    return module(*record.args, **record.kwargs)


def relative_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean((output - target)^2) / mean(target^2)`` (a scale-free output error)."""
    return ((output - target) ** 2).mean() / (target.detach() ** 2).mean().clamp_min(1e-20)


def weight_quantizers_off(layers: Sequence[Layer]) -> AbstractContextManager[None]:
    """Inside the block the layers' weight quantizers pass weights through (their amax is kept)."""
    return backend.switched_off(layer.quantizer("weight") for layer in layers)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter of ``model`` collects gradients inside the block."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextmanager
def fused_activation_off(*modules: nn.Module) -> Iterator[None]:
    """spconv layers' fused activation (act_type) off inside the block: their pre-activation output."""
    changed = []
    try:
        for module in modules:
            act = getattr(module, "act_type", None)
            if sparse.is_sparse_conv(module) and act is not None and sparse.activation_name(module) != "None":
                changed.append((module, act))
                module.act_type = type(act).None_
        yield
    finally:
        for module, act in changed:
            module.act_type = act


def batch_limit(batches: Any, count: int) -> list:
    """The first ``count`` batches as a list (a data factory may return any iterable)."""
    return list(itertools.islice(iter(batches), count))
