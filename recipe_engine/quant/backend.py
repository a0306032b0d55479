"""The engine's view of quantizer backends: one set of functions, whatever the library.

Every call that takes a quantizer goes to the backend that owns it
(:func:`recipe_engine.backends.backend_of`); calls that create something take the backend's
name (a recipe's ``backend:``, default ``pytorch-quantization``). No module here or elsewhere in
the engine imports a quantization library or touches its objects' private attributes: that is
the backends' job (:mod:`recipe_engine.backends`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from .. import backends
from .slots import QuantizerSlots

Quantizer = nn.Module  # a backend's quantizer object (for annotations)


def _of(quantizer: object) -> backends.Backend:
    found = backends.backend_of(quantizer)
    if found is None:
        raise TypeError(f"{type(quantizer).__name__} is not a quantizer of any loaded backend")
    return found


def get(name: str | None = None) -> backends.Backend:
    return backends.get(name)


def is_quantizer(module: object) -> bool:
    return backends.backend_of(module) is not None


def make_quantizer(spec, calibration, channel_axis: int | None = None, backend: str | None = None) -> Quantizer:
    """A quantizer for ``spec`` from ``backend``; ``channel_axis`` is used when ``spec.per_channel`` is set."""
    return backends.get(backend).make_quantizer(spec, calibration, channel_axis)


def identity_quantizer(backend: str | None = None) -> Quantizer:
    """A disabled quantizer, for module slots a rule leaves unquantized."""
    return backends.get(backend).identity_quantizer()


def quantizer_summary(quantizer: Quantizer) -> dict:
    """A JSON-able description of a quantizer (for plans and reports)."""
    info = _of(quantizer).describe(quantizer)
    summary = {k: info[k] for k in ("num_bits", "axis", "unsigned", "calibrator", "enabled")}
    if info.get("format", "int") != "int":
        summary["format"] = info["format"]
    return summary


def describe(quantizer: Quantizer) -> dict:
    """Everything the backend says about a quantizer, with ``backend`` (its name)."""
    owner = _of(quantizer)
    return {**owner.describe(quantizer), "backend": owner.name}


def compatible(a: Quantizer, b: Quantizer) -> bool:
    """Quantizers that may be merged into one (share groups)."""
    keys = ("num_bits", "axis", "unsigned", "narrow_range", "calibrator", "format", "backend")
    da, db = describe(a), describe(b)
    return all(da.get(k) == db.get(k) for k in keys)


def dense_info(module: nn.Module, backend: str | None = None) -> tuple[bool, int] | None:
    """``(has weight, weight channel axis)`` if ``backend`` can quantize this dense module, else None."""
    return backends.get(backend).dense_info(module)


def is_quantized_dense(module: nn.Module) -> bool:
    """Whether some loaded backend has already swapped ``module`` for its quantized class."""
    return any(b.module_quantizer(module, "input") is not None for b in backends.loaded())


def swap_dense_module(module: nn.Module, input_quantizer: Quantizer | None,
                      weight_quantizer: Quantizer | None, backend: str | None = None) -> nn.Module:
    """Turn a dense torch module into the backend's quantized class, in place (no parameter copied)."""
    return backends.get(backend).swap_dense_module(module, input_quantizer, weight_quantizer)


def weight_channel_axis(module: nn.Module, backend: str | None = None) -> int:
    """Axis of the output channels in ``module.weight`` (for per-channel quantizers)."""
    info = backends.get(backend).dense_info(module)
    if info is not None:
        return info[1]
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return 1
    return 0  # Conv/Linear, and spconv 2.x weights [O, k.., I]


def has_weight_slot(module: nn.Module, backend: str | None = None) -> bool:
    info = backends.get(backend).dense_info(module)
    return info[0] if info else True


def module_quantizer(module: nn.Module, role: str) -> Quantizer | None:
    """The ``"input"`` or ``"weight"`` quantizer of a quantized module (dense or sparse), else None."""
    if isinstance(module, QuantizerSlots):  # sparse convs and extensions' module kinds
        return module.input_quantizer if role == "input" else module.weight_quantizer
    for owner in backends.loaded():
        found = owner.module_quantizer(module, role)
        if found is not None:
            return found
    return None


def set_module_quantizer(module: nn.Module, role: str, quantizer: Quantizer) -> None:
    """Replace a quantized module's ``"input"``/``"weight"`` quantizer (share groups)."""
    if isinstance(module, QuantizerSlots):
        module.set_quantizer(role, quantizer)
        return
    for owner in backends.loaded():
        if owner.module_quantizer(module, role) is not None:
            owner.set_module_quantizer(module, role, quantizer)
            return
    raise TypeError(f"{type(module).__name__} has no {role} quantizer")


def start_calibration(quantizer: Quantizer) -> None:
    """Collect statistics and pass data through unquantized."""
    _of(quantizer).start_statistics(quantizer)


def stop_calibration(quantizer: Quantizer) -> None:
    _of(quantizer).stop_statistics(quantizer)


def calibration_statistics(quantizer: Quantizer) -> dict[str, torch.Tensor] | None:
    """Statistics collected so far as tensors: ``{"amax"}`` (max) or ``{"hist", "edges"}`` (histogram)."""
    return _of(quantizer).statistics(quantizer)


def load_calibration_statistics(quantizer: Quantizer, stats: dict[str, torch.Tensor]) -> None:
    """Replace a calibrator's statistics (e.g. with statistics merged across ranks)."""
    _of(quantizer).load_statistics(quantizer, stats)


def has_statistics(quantizer: Quantizer) -> bool:
    return calibration_statistics(quantizer) is not None


def is_histogram(quantizer: Quantizer) -> bool:
    return _of(quantizer).describe(quantizer)["calibrator"] == "histogram"


def get_amax(quantizer: Quantizer) -> torch.Tensor | None:
    return _of(quantizer).get_amax(quantizer)


def set_amax(quantizer: Quantizer, amax: torch.Tensor) -> None:
    """Store a calibrated amax (creating the buffer on first use, on the quantizer's device)."""
    _of(quantizer).set_amax(quantizer, amax)


def set_enabled(quantizer: Quantizer, enabled: bool) -> None:
    _of(quantizer).set_enabled(quantizer, enabled)


def is_enabled(quantizer: Quantizer) -> bool:
    return _of(quantizer).is_enabled(quantizer)


@contextmanager
def switched_off(quantizers) -> Iterator[None]:
    """Switch ``quantizers`` off for the block, then on again (pass the enabled ones)."""
    quantizers = list(quantizers)
    try:
        for quantizer in quantizers:
            set_enabled(quantizer, False)
        yield
    finally:
        for quantizer in quantizers:
            set_enabled(quantizer, True)


@contextmanager
def export_mode() -> Iterator[None]:
    """Inside the block, every loaded backend's quantizers trace to ONNX QuantizeLinear/DequantizeLinear."""
    with ExitStack() as stack:
        for owner in list(backends.loaded()):
            stack.enter_context(owner.export_mode())
        yield


def finish_onnx(model) -> int:
    """Let every loaded backend rewrite its library's ONNX output into standard ops (in place)."""
    changed = 0
    for owner in list(backends.loaded()):
        finish = getattr(owner, "finish_onnx", None)
        if finish is not None:
            changed += finish(model)
    return changed


def load_state_dict(model: nn.Module, state_dict: dict, strict: bool = True, backend: str | None = None):
    """``model.load_state_dict`` restoring amax buffers a freshly quantized model lacks (CPU-safe)."""
    return backends.get(backend).load_state_dict(model, state_dict, strict=strict)
