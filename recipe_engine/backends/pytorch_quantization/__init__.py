"""The pytorch-quantization 2.1.3 backend: the only code that knows that library.

Quantizers are ``TensorQuantizer`` objects with the library's ``MaxCalibrator`` or
``HistogramCalibrator``; dense modules become its ``QuantConv2d``/``QuantLinear``/... classes in
place; ONNX export uses its ``use_fb_fake_quant`` switch (torch's native fake-quant ops, written
as QuantizeLinear/DequantizeLinear). CPU workarounds for the library live in :mod:`.cpu_compat`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator
from pytorch_quantization.tensor_quant import QuantDescriptor
from torch import nn

from . import calibrators, cpu_compat

# pytorch-quantization logs a warning per amax load and per module; keep the console readable.
logging.getLogger("pytorch_quantization").setLevel(logging.ERROR)
try:  # absl logging is what pytorch-quantization actually uses
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
except ImportError:  # pragma: no cover
    pass

Quantizer = quant_nn.TensorQuantizer

# exact torch class -> (pytorch-quantization class, has weight, output-channel axis of the weight)
DENSE_QUANT_CLASSES: dict[type, tuple[type, bool, int]] = {
    nn.Conv1d: (quant_nn.QuantConv1d, True, 0),
    nn.Conv2d: (quant_nn.QuantConv2d, True, 0),
    nn.Conv3d: (quant_nn.QuantConv3d, True, 0),
    nn.ConvTranspose1d: (quant_nn.QuantConvTranspose1d, True, 1),
    nn.ConvTranspose2d: (quant_nn.QuantConvTranspose2d, True, 1),
    nn.ConvTranspose3d: (quant_nn.QuantConvTranspose3d, True, 1),
    nn.Linear: (quant_nn.QuantLinear, True, 0),
    nn.MaxPool1d: (quant_nn.QuantMaxPool1d, False, 0),
    nn.MaxPool2d: (quant_nn.QuantMaxPool2d, False, 0),
    nn.MaxPool3d: (quant_nn.QuantMaxPool3d, False, 0),
    nn.AvgPool1d: (quant_nn.QuantAvgPool1d, False, 0),
    nn.AvgPool2d: (quant_nn.QuantAvgPool2d, False, 0),
    nn.AvgPool3d: (quant_nn.QuantAvgPool3d, False, 0),
    nn.AdaptiveAvgPool1d: (quant_nn.QuantAdaptiveAvgPool1d, False, 0),
    nn.AdaptiveAvgPool2d: (quant_nn.QuantAdaptiveAvgPool2d, False, 0),
    nn.AdaptiveAvgPool3d: (quant_nn.QuantAdaptiveAvgPool3d, False, 0),
}
QUANTIZED_DENSE_CLASSES = tuple(cls for cls, _, _ in DENSE_QUANT_CLASSES.values())
_SLOTS = {"input": "_input_quantizer", "weight": "_weight_quantizer"}


#: One pristine ``TensorQuantizer`` per distinct constructor arguments, never handed out (see _fresh_quantizer).
_PROTOTYPES: dict[tuple, Quantizer] = {}


def _fresh_quantizer(fields: dict, disabled: bool = False, calibrator: bool = True) -> Quantizer:
    """``TensorQuantizer(QuantDescriptor(**fields), disabled=disabled)`` without running its constructor.

    The constructor assigns ~15 attributes through ``nn.Module.__setattr__`` (about 60 us a quantizer, most of
    a 10k-module recipe application). A quantizer without amax buffer or Clip module is plain attributes and
    empty containers, so a copy of a prototype built once by the library's constructor is the same object:
    every container (parameter/buffer/module dicts, hook dicts) is copied, so none is shared, and the
    calibrator is a new one of the prototype's kind (``calibrator=False``: None, for a caller that sets one).
    """
    key = (disabled, *sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in fields.items()))
    prototype = _PROTOTYPES.get(key)
    if prototype is None:
        prototype = _PROTOTYPES[key] = Quantizer(QuantDescriptor(**fields), disabled=disabled)
    quantizer = Quantizer.__new__(Quantizer)
    state = {k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in prototype.__dict__.items()}
    if "_calibrator" in state and not calibrator:
        state["_calibrator"] = None  # the caller sets its own
    elif "_calibrator" in state:  # the library's own kind, fresh
        model = state["_calibrator"]
        fresh = MaxCalibrator if type(model) is MaxCalibrator else HistogramCalibrator
        state["_calibrator"] = fresh(model._num_bits, model._axis, model._unsigned)
    quantizer.__dict__.update(state)
    return quantizer


class PytorchQuantizationBackend:
    name = "pytorch-quantization"

    # -- quantizer objects ------------------------------------------------------------------
    def make_quantizer(self, spec, calibration, channel_axis: int | None = None) -> Quantizer:
        if getattr(spec, "format", "int") != "int":
            raise ValueError(f"format {spec.format!r} needs the modelopt backend (backend: modelopt)")
        axis = spec.axis if spec.axis is not None else (channel_axis if spec.per_channel else None)
        fields = dict(num_bits=spec.num_bits, axis=axis, unsigned=spec.unsigned, narrow_range=spec.narrow_range,
                      calib_method=spec.calibrator, learn_amax=spec.learn_amax, fake_quant=spec.fake_quant,
                      amax=spec.amax)
        if spec.learn_amax or spec.amax is not None:  # a Clip module or an amax buffer: built the library's way
            quantizer = Quantizer(QuantDescriptor(**fields))
        else:
            quantizer = _fresh_quantizer(fields, calibrator=spec.calibrator != "histogram")  # (replaced below)
        if spec.calibrator == "histogram":
            quantizer._calibrator = calibrators.FastHistogramCalibrator(
                spec.num_bits, axis, spec.unsigned, num_bins=calibration.num_bins, skip_zeros=calibration.skip_zeros)
        elif type(getattr(quantizer, "_calibrator", None)) is MaxCalibrator:
            quantizer._calibrator = calibrators.FastMaxCalibrator(spec.num_bits, axis, spec.unsigned)
        return quantizer

    def identity_quantizer(self) -> Quantizer:
        return _fresh_quantizer({"num_bits": 8}, disabled=True)

    def owns(self, obj: object) -> bool:
        return isinstance(obj, Quantizer)

    def describe(self, quantizer: Quantizer) -> dict:
        return {
            "num_bits": quantizer.num_bits,
            "axis": quantizer.axis,
            "unsigned": quantizer.unsigned,
            "narrow_range": quantizer.narrow_range,
            "calibrator": "histogram" if isinstance(quantizer._calibrator, HistogramCalibrator) else "max",
            "format": "int",
            "enabled": not quantizer._disabled,
        }

    # -- statistics and amax --------------------------------------------------------------
    def start_statistics(self, quantizer: Quantizer) -> None:
        quantizer.disable_quant()
        quantizer.enable_calib()

    def stop_statistics(self, quantizer: Quantizer) -> None:
        quantizer.disable_calib()
        quantizer.enable_quant()

    def statistics(self, quantizer: Quantizer) -> dict | None:
        return calibrators.statistics(getattr(quantizer, "_calibrator", None))

    def load_statistics(self, quantizer: Quantizer, stats: dict) -> None:
        calibrators.load_statistics(quantizer._calibrator, stats)

    def seed_histogram(self, quantizer: Quantizer, amax, device=None) -> None:
        calibrators.seed_histogram(quantizer._calibrator, amax, device=device)

    def get_amax(self, quantizer: Quantizer) -> torch.Tensor | None:
        amax = getattr(quantizer, "_amax", None)
        return None if amax is None else amax.detach()

    def set_amax(self, quantizer: Quantizer, amax: torch.Tensor) -> None:
        amax = amax.detach().float()
        if "_amax" in quantizer._buffers:
            current = quantizer._amax
            quantizer._amax = amax.to(current.device).reshape(current.shape) \
                if current.numel() == amax.numel() else amax
        else:
            quantizer.register_buffer("_amax", amax)
        if quantizer._learn_amax:
            quantizer.init_learn_amax()

    def set_enabled(self, quantizer: Quantizer, enabled: bool) -> None:
        if enabled:
            quantizer.enable()
        else:
            quantizer.disable()

    def is_enabled(self, quantizer: Quantizer) -> bool:
        return not quantizer._disabled

    # -- modules --------------------------------------------------------------------------
    def dense_info(self, module: nn.Module) -> tuple[bool, int] | None:
        entry = DENSE_QUANT_CLASSES.get(type(module))
        if entry is None and isinstance(module, QUANTIZED_DENSE_CLASSES):
            entry = next(v for v in DENSE_QUANT_CLASSES.values() if v[0] is type(module))
        return None if entry is None else (entry[1], entry[2])

    def swap_dense_module(self, module: nn.Module, input_quantizer, weight_quantizer) -> nn.Module:
        entry = DENSE_QUANT_CLASSES.get(type(module))
        if entry is None:
            current = type(module)
            if isinstance(module, QUANTIZED_DENSE_CLASSES):
                entry = next(v for v in DENSE_QUANT_CLASSES.values() if v[0] is current)
            else:
                raise TypeError(f"no quantized version of {current.__module__}.{current.__qualname__}")
        quant_cls, has_weight, _ = entry
        module.__class__ = quant_cls
        module._fake_quant = True
        module._input_quantizer = input_quantizer or self.identity_quantizer()
        if has_weight:
            module._weight_quantizer = weight_quantizer or self.identity_quantizer()
        return module

    def module_quantizer(self, module: nn.Module, role: str):
        if not isinstance(module, QUANTIZED_DENSE_CLASSES):
            return None
        return getattr(module, _SLOTS[role], None)

    def set_module_quantizer(self, module: nn.Module, role: str, quantizer) -> None:
        setattr(module, _SLOTS[role], quantizer)

    # -- export and loading -------------------------------------------------------------
    @contextmanager
    def export_mode(self) -> Iterator[None]:
        """torch's native fake-quant ops (the TorchScript exporter writes them as Q/DQ) inside the block."""
        previous = Quantizer.use_fb_fake_quant
        Quantizer.use_fb_fake_quant = True
        try:
            yield
        finally:
            Quantizer.use_fb_fake_quant = previous

    def load_state_dict(self, model: nn.Module, state_dict: dict, strict: bool = True):
        return cpu_compat.load_state_dict(model, state_dict, strict=strict)


BACKEND = PytorchQuantizationBackend()
