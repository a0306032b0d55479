"""CPU workarounds for pytorch-quantization 2.1.3.

This module (part of the pytorch-quantization backend) is the only place that works around pytorch-quantization's CPU breakage.
Two upstream code paths assume CUDA:

1. ``HistogramCalibrator.compute_amax("mse")`` -> ``_compute_amax_mse`` moves the histogram to the GPU
   (``pytorch_quantization/calib/histogram.py`` lines 265-266: ``torch.from_numpy(...).float().cuda()``),
   so MSE calibration raises on CPU-only machines (``TensorQuantizer.load_calib_amax("mse")`` too).

   Workaround, no patching: :func:`compute_histogram_amax` and :func:`load_calib_amax` compute amax with
   :mod:`recipe_engine.calib.amax_search` (same results as upstream, vectorised, device-agnostic), so
   callers never reach the upstream MSE path. Always use these instead of ``calibrator.compute_amax`` /
   ``quantizer.load_calib_amax``.

2. ``TensorQuantizer._load_from_state_dict`` registers a missing ``_amax`` buffer with
   ``state_dict[prefix + '_amax'].data.cuda()``
   (``pytorch_quantization/nn/modules/tensor_quantizer.py`` line 401). Loading a calibrated checkpoint
   into a freshly built (not yet calibrated) model therefore fails on CPU-only machines.

   Workaround: a device-correct replacement of that method, which registers ``_amax`` as a copy of the
   state-dict tensor on the right device and otherwise behaves like upstream (logs when the checkpoint
   has no amax, then defers to ``nn.Module._load_from_state_dict``: shape checks, strict/missing keys).
   Two ways to apply it, the scoped one preferred:

   * :func:`cpu_safe_loading` (context manager, recommended): overrides the method only on the
     ``TensorQuantizer`` instances inside the given model and only for the ``with`` block; ``_amax`` goes
     to the device of the quantizer's own tensors, else of its nearest ancestor module's parameters or
     buffers (e.g. the conv weight), else CPU. Nothing global is touched, so it is thread-safe with
     respect to other models. :func:`load_state_dict` wraps ``model.load_state_dict`` in it.
   * :func:`install` (idempotent, process-wide; :func:`uninstall` reverts): replaces the method on the
     class, for load paths we do not control. A class-level method cannot see the parent module, so
     ``_amax`` goes to the quantizer's own tensors' device, else to CUDA when available (upstream's
     behaviour on GPU machines), else CPU.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from pytorch_quantization.calib import HistogramCalibrator
from pytorch_quantization.nn import TensorQuantizer
from torch import nn

from ...calib.amax_search import EmptyCalibratorError
from .calibrators import compute_amax

__all__ = [
    "compute_histogram_amax",
    "cpu_safe_loading",
    "install",
    "is_installed",
    "load_calib_amax",
    "load_state_dict",
    "uninstall",
]

logger = logging.getLogger(__name__)

_UPSTREAM_LOAD = TensorQuantizer._load_from_state_dict


# --------------------------------------------------------------------------------------------------------
# 1. amax computation
# --------------------------------------------------------------------------------------------------------
def compute_histogram_amax(
    calibrator: HistogramCalibrator,
    method: str,
    *,
    stride: int = 1,
    start_bin: int = 128,
    percentile: float = 99.99,
) -> torch.Tensor:
    """Drop-in for ``HistogramCalibrator.compute_amax(method, ...)`` that also works on CPU.

    Raises ``ValueError`` for an unknown method or a calibrator without data (upstream returns None).
    """
    if not isinstance(calibrator, HistogramCalibrator):
        raise TypeError(f"expected a HistogramCalibrator, got {type(calibrator).__name__}")
    return compute_amax(calibrator, method, stride=stride, start_bin=start_bin, percentile=percentile)


def load_calib_amax(
    quantizer: TensorQuantizer,
    method: str | None = None,
    *,
    strict: bool = True,
    stride: int = 1,
    start_bin: int = 128,
    percentile: float = 99.99,
) -> torch.Tensor:
    """Drop-in for ``TensorQuantizer.load_calib_amax`` computing amax with the vectorised searches.

    ``method`` is required for a histogram calibrator; for a ``MaxCalibrator`` it defaults to ``"max"``.
    Stores amax in the quantizer's ``_amax`` buffer (created if missing, on the device of the existing
    buffer otherwise) and returns it. With ``strict=False`` a calibrator without data yields a NaN amax
    and a warning instead of a ``ValueError`` (as upstream).
    """
    calibrator = getattr(quantizer, "_calibrator", None)
    if calibrator is None:
        raise RuntimeError("quantizer has no calibrator")
    if method is None:
        if isinstance(calibrator, HistogramCalibrator):
            raise ValueError("a calibration method is required for a HistogramCalibrator")
        method = "max"
    try:
        amax = compute_amax(calibrator, method, stride=stride, start_bin=start_bin, percentile=percentile)
    except EmptyCalibratorError as exc:
        if strict:
            raise
        logger.warning("%s; setting amax to NaN", exc)
        amax = torch.tensor(math.nan)
    if "_amax" in quantizer._buffers and quantizer._amax is not None:
        quantizer._amax.copy_(amax)
    else:
        quantizer.register_buffer("_amax", amax.detach().clone())
    return quantizer._amax


# --------------------------------------------------------------------------------------------------------
# 2. state-dict loading
# --------------------------------------------------------------------------------------------------------
def _own_device(module: nn.Module) -> torch.device | None:
    """Device of a module's own (non-recursive) parameters/buffers other than ``_amax``."""
    for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if name != "_amax" and tensor is not None:
            return tensor.device
    return None


def _load_from_state_dict(
    quantizer: TensorQuantizer,
    fallback_device: torch.device | None,
    state_dict: Mapping[str, Any],
    prefix: str,
    *args: Any,
    **kwargs: Any,
) -> None:
    """Upstream ``TensorQuantizer._load_from_state_dict`` without the ``.cuda()``."""
    key = prefix + "_amax"
    dst_has_amax = quantizer._buffers.get("_amax") is not None
    src_has_amax = key in state_dict
    if dst_has_amax and not src_has_amax:
        logger.error("%s: no amax in state_dict", prefix[:-1])
    elif src_has_amax and not dst_has_amax:
        if fallback_device is None:
            fallback_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = _own_device(quantizer) or fallback_device
        quantizer.register_buffer("_amax", state_dict[key].detach().to(device, copy=True))
    elif src_has_amax:
        logger.debug("%s: overwriting amax", prefix[:-1])
    nn.Module._load_from_state_dict(quantizer, state_dict, prefix, *args, **kwargs)


def _installed_load_from_state_dict(
    self: TensorQuantizer, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    _load_from_state_dict(self, None, state_dict, prefix, *args, **kwargs)


def install() -> None:
    """Replace ``TensorQuantizer._load_from_state_dict`` process-wide with the device-correct version.

    Idempotent. Prefer :func:`cpu_safe_loading`, which is scoped and picks the model's device.
    """
    TensorQuantizer._load_from_state_dict = _installed_load_from_state_dict


def uninstall() -> None:
    """Restore upstream ``TensorQuantizer._load_from_state_dict`` (no-op when not installed)."""
    TensorQuantizer._load_from_state_dict = _UPSTREAM_LOAD


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return TensorQuantizer._load_from_state_dict is _installed_load_from_state_dict


@contextmanager
def cpu_safe_loading(model: nn.Module) -> Iterator[nn.Module]:
    """Make ``model.load_state_dict`` work without CUDA for the duration of the block.

    Overrides ``_load_from_state_dict`` on each ``TensorQuantizer`` instance inside ``model`` (the class
    and other models are untouched) and restores it on exit. A missing ``_amax`` is registered on the
    device of the quantizer's own tensors, else of its nearest ancestor's parameters/buffers, else CPU.
    """
    patched: list[TensorQuantizer] = []

    def visit(module: nn.Module, inherited: torch.device) -> None:
        device = _own_device(module) or inherited
        if isinstance(module, TensorQuantizer) and "_load_from_state_dict" not in module.__dict__:
            module.__dict__["_load_from_state_dict"] = functools.partial(
                _load_from_state_dict, module, device
            )
            patched.append(module)
        for child in module.children():
            visit(child, device)

    try:
        visit(model, torch.device("cpu"))
        yield model
    finally:
        for quantizer in patched:
            quantizer.__dict__.pop("_load_from_state_dict", None)


def load_state_dict(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
    """``model.load_state_dict(state_dict, strict)`` inside :func:`cpu_safe_loading`."""
    with cpu_safe_loading(model):
        return model.load_state_dict(state_dict, strict=strict)
