"""Quantizer backends: the protocol the engine speaks, and the registry of backends by name.

A backend is the only code that knows a quantization library (pytorch-quantization,
NVIDIA Model-Optimizer, ...): how to make a quantizer object from a
:class:`~recipe_engine.recipe.schema.QuantizerSpec`, switch it between collecting
statistics and quantizing, read and load those statistics, set and read amax, swap a dense
torch module for the library's quantized class, and switch the library to its ONNX Q/DQ
export mode. Everything else in the engine goes through :mod:`recipe_engine.quant.backend`,
which dispatches to the backend that owns a quantizer. Sparse (spconv) convolutions are
wrapped by the engine itself (:mod:`recipe_engine.quant.sparse`), calling the backend's
quantizer objects, and amax is always computed by the engine's own searches
(:mod:`recipe_engine.calib`) from the statistics a backend returns, so two backends given
the same data produce the same amax.

Built-in backends register here exactly as an extension does::

    from recipe_engine import backends
    backends.register("my-lib", "my_package.my_backend:BACKEND")   # or an object / a factory

A recipe picks one with the top-level key ``backend:`` (default ``pytorch-quantization``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..registry import Registry, resolve

if TYPE_CHECKING:  # the registry itself stays free of torch (the recipe schema checks names with it)
    from torch import nn

DEFAULT = "pytorch-quantization"


@runtime_checkable
class Backend(Protocol):
    """What the engine needs from a quantization library (one object per library)."""

    name: str

    # -- quantizer objects ------------------------------------------------------------------
    def make_quantizer(self, spec: Any, calibration: Any, channel_axis: int | None = None) -> nn.Module:
        """A quantizer module for ``spec``; ``channel_axis`` is used when ``spec.per_channel`` is set."""

    def identity_quantizer(self) -> nn.Module:
        """A disabled quantizer, for module slots a rule leaves unquantized."""

    def owns(self, obj: object) -> bool:
        """Whether ``obj`` is one of this library's quantizer objects."""

    def describe(self, quantizer: nn.Module) -> dict:
        """``{num_bits, axis, unsigned, narrow_range, calibrator, format, enabled}`` (JSON-able)."""

    # -- statistics and amax --------------------------------------------------------------
    def start_statistics(self, quantizer: nn.Module) -> None:
        """Collect statistics and pass data through unquantized."""

    def stop_statistics(self, quantizer: nn.Module) -> None:
        """Stop collecting; quantize again."""

    def statistics(self, quantizer: nn.Module) -> dict | None:
        """``{"amax"}`` (max calibrator) or ``{"hist", "edges"}`` (histogram) tensors, None if none yet."""

    def load_statistics(self, quantizer: nn.Module, stats: dict) -> None:
        """Replace the collected statistics (e.g. merged across ranks or seeded bins)."""

    def get_amax(self, quantizer: nn.Module) -> Any:
        """The amax tensor in use (None before calibration)."""

    def set_amax(self, quantizer: nn.Module, amax: Any) -> None:
        """Store an amax computed by the engine."""

    def set_enabled(self, quantizer: nn.Module, enabled: bool) -> None: ...

    def is_enabled(self, quantizer: nn.Module) -> bool: ...

    # -- modules --------------------------------------------------------------------------
    def dense_info(self, module: nn.Module) -> tuple[bool, int] | None:
        """``(has weight, weight output-channel axis)`` for a quantizable dense module, else None."""

    def swap_dense_module(self, module: nn.Module, input_quantizer: nn.Module | None,
                          weight_quantizer: nn.Module | None) -> nn.Module:
        """Make ``module`` the library's quantized class in place (no parameter copied)."""

    def module_quantizer(self, module: nn.Module, role: str) -> nn.Module | None:
        """The ``"input"``/``"weight"`` quantizer of a module this backend swapped, else None."""

    def set_module_quantizer(self, module: nn.Module, role: str, quantizer: nn.Module) -> None: ...

    # -- export and loading -------------------------------------------------------------
    def export_mode(self) -> AbstractContextManager:
        """A context in which quantizers trace to ONNX QuantizeLinear/DequantizeLinear."""

    def load_state_dict(self, model: nn.Module, state_dict: dict, strict: bool = True) -> Any:
        """``model.load_state_dict`` that also restores amax buffers missing in a fresh model (on CPU)."""

    # Optional: ``finish_onnx(model_proto) -> int`` rewrites what the library's ONNX symbolics wrote
    # (e.g. custom ops into standard ones) and returns how many nodes changed; raises ValueError.


BackendSource = Backend | str | Callable[[], Backend]
BACKENDS: Registry[BackendSource] = Registry("backend", "recipe_engine.backends.register(name, source)")
_LOADED: dict[str, Backend] = {}


class UnknownBackendError(ValueError):
    """A recipe names a backend that is not registered (or whose library is not installed)."""


def register(name: str, source: BackendSource) -> None:
    """Register a backend under ``name``: an object, a zero-argument factory, or ``"module:attr"``.

    ``"module:attr"`` is imported on first use, so registering a backend never imports its library.
    Registering a name again replaces the earlier entry.
    """
    _LOADED.pop(name, None)
    BACKENDS.add(name, source)


def unregister(name: str) -> None:
    """Remove backend ``name`` (e.g. at the end of a test)."""
    _LOADED.pop(name, None)
    BACKENDS.remove(name)


def registered() -> list[str]:
    return sorted(BACKENDS.names())


def get(name: str | None = None) -> Backend:
    """The backend registered as ``name`` (default: :data:`DEFAULT`), loading it on first use."""
    name = name or DEFAULT
    if name in _LOADED:
        return _LOADED[name]
    source = BACKENDS.lookup(name)
    if source is None:
        raise UnknownBackendError(f"unknown backend {name!r}; registered: {', '.join(registered())}")
    if isinstance(source, str):
        try:
            source = resolve(source)
        except ImportError as exc:
            raise UnknownBackendError(f"backend {name!r} cannot be loaded: {exc}") from exc
    backend = source() if callable(source) and not isinstance(source, Backend) else source
    if not isinstance(backend, Backend):
        raise TypeError(f"backend {name!r} does not implement recipe_engine.backends.Backend")
    _LOADED[name] = backend
    return backend


def loaded() -> Iterator[Backend]:
    """Backends already in use (their libraries imported), default first."""
    return iter(sorted(_LOADED.values(), key=lambda b: b.name != DEFAULT))


def backend_of(obj: object) -> Backend | None:
    """The loaded backend whose quantizer ``obj`` is, else None."""
    for backend in loaded():
        if backend.owns(obj):
            return backend
    return None


# Built-ins, registered the same way as an extension's backend.
register("pytorch-quantization", "recipe_engine.backends.pytorch_quantization:BACKEND")
register("modelopt", "recipe_engine.backends.modelopt:BACKEND")
