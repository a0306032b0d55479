"""The quantizer backend: the only module that knows pytorch-quantization.

Everything else in the engine speaks in terms of :class:`QuantizerSpec` and the helpers
below (make a quantizer, start/stop calibration, read/write amax, swap a dense module for
its quantized class). A second backend (e.g. NVIDIA Model-Optimizer) would re-implement
this module's functions.
"""

from __future__ import annotations

import logging

import torch
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.calib import HistogramCalibrator
from pytorch_quantization.tensor_quant import QuantDescriptor
from torch import nn

from ..recipe.schema import CalibrationSection, QuantizerSpec

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


def is_quantizer(module: object) -> bool:
    return isinstance(module, Quantizer)


def make_quantizer(spec: QuantizerSpec, calibration: CalibrationSection, channel_axis: int | None = None) -> Quantizer:
    """A TensorQuantizer for ``spec``; ``channel_axis`` is used when ``spec.per_channel`` is set."""
    axis = spec.axis if spec.axis is not None else (channel_axis if spec.per_channel else None)
    descriptor = QuantDescriptor(
        num_bits=spec.num_bits, axis=axis, unsigned=spec.unsigned, narrow_range=spec.narrow_range,
        calib_method=spec.calibrator, learn_amax=spec.learn_amax, fake_quant=spec.fake_quant, amax=spec.amax,
    )
    quantizer = Quantizer(descriptor)
    if spec.calibrator == "histogram":
        quantizer._calibrator = HistogramCalibrator(
            spec.num_bits, axis, spec.unsigned, num_bins=calibration.num_bins, skip_zeros=calibration.skip_zeros)
    quantizer._recipe_method = spec.method  # per-quantizer amax method override (None: calibration.method)
    quantizer._recipe_fixed_amax = spec.amax is not None
    return quantizer


def identity_quantizer() -> Quantizer:
    """A disabled quantizer, for module slots a rule leaves unquantized."""
    return Quantizer(QuantDescriptor(num_bits=8), disabled=True)


def quantizer_summary(quantizer: Quantizer) -> dict:
    """A JSON-able description of a quantizer (for plans and reports)."""
    calibrator = getattr(quantizer, "_calibrator", None)
    return {
        "num_bits": quantizer.num_bits,
        "axis": quantizer.axis,
        "unsigned": quantizer.unsigned,
        "calibrator": "histogram" if isinstance(calibrator, HistogramCalibrator) else "max",
        "enabled": not quantizer._disabled,
    }


def compatible(a: Quantizer, b: Quantizer) -> bool:
    """Quantizers that may be merged into one (share groups)."""
    return (a.num_bits, a.axis, a.unsigned, a.narrow_range, type(getattr(a, "_calibrator", None))) == \
        (b.num_bits, b.axis, b.unsigned, b.narrow_range, type(getattr(b, "_calibrator", None)))


def swap_dense_module(module: nn.Module, input_quantizer: Quantizer | None,
                      weight_quantizer: Quantizer | None) -> nn.Module:
    """Turn a dense torch module into pytorch-quantization's quantized class, in place.

    The module keeps its identity, attributes and parameters (no copy: optimizers keep
    working); only its class changes and it gains ``_input_quantizer``/``_weight_quantizer``.
    """
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
    module._input_quantizer = input_quantizer or identity_quantizer()
    if has_weight:
        module._weight_quantizer = weight_quantizer or identity_quantizer()
    return module


def weight_channel_axis(module: nn.Module) -> int:
    """Axis of the output channels in ``module.weight`` (for per-channel quantizers)."""
    entry = DENSE_QUANT_CLASSES.get(type(module))
    if entry is not None:
        return entry[2]
    for torch_cls, (quant_cls, _, axis) in DENSE_QUANT_CLASSES.items():
        if isinstance(module, (torch_cls, quant_cls)):
            return axis
    return 0  # spconv 2.x weights are [O, k.., I]


def has_weight_slot(module: nn.Module) -> bool:
    entry = DENSE_QUANT_CLASSES.get(type(module))
    return entry[1] if entry else True


def start_calibration(quantizer: Quantizer) -> None:
    """Collect statistics and pass data through unquantized."""
    quantizer.disable_quant()
    quantizer.enable_calib()


def stop_calibration(quantizer: Quantizer) -> None:
    quantizer.disable_calib()
    quantizer.enable_quant()


def has_statistics(quantizer: Quantizer) -> bool:
    calibrator = getattr(quantizer, "_calibrator", None)
    if isinstance(calibrator, HistogramCalibrator):
        return calibrator._calib_hist is not None
    return calibrator is not None and calibrator.compute_amax() is not None


def is_histogram(quantizer: Quantizer) -> bool:
    return isinstance(getattr(quantizer, "_calibrator", None), HistogramCalibrator)


def histogram_range(quantizer: Quantizer) -> torch.Tensor:
    """The largest absolute value a histogram calibrator has seen (its last bin edge)."""
    edges = quantizer._calibrator._calib_bin_edges
    return torch.as_tensor(edges[-1]).detach().float().clone()


def calibrator_of(quantizer: Quantizer):
    return getattr(quantizer, "_calibrator", None)


def calibration_statistics(quantizer: Quantizer) -> dict[str, torch.Tensor] | None:
    """Statistics collected so far as tensors: ``{"amax"}`` (max) or ``{"hist", "edges"}`` (histogram)."""
    calibrator = getattr(quantizer, "_calibrator", None)
    if isinstance(calibrator, HistogramCalibrator):
        if calibrator._calib_hist is None:
            return None
        return {"hist": torch.as_tensor(calibrator._calib_hist).detach(),
                "edges": torch.as_tensor(calibrator._calib_bin_edges).detach()}
    amax = None if calibrator is None else calibrator.compute_amax()
    return None if amax is None else {"amax": amax.detach()}


def load_calibration_statistics(quantizer: Quantizer, stats: dict[str, torch.Tensor]) -> None:
    """Replace a calibrator's statistics (e.g. with statistics merged across ranks)."""
    calibrator = quantizer._calibrator
    if isinstance(calibrator, HistogramCalibrator):
        calibrator._calib_hist = stats["hist"].float()
        calibrator._calib_bin_edges = stats["edges"].float()
        calibrator._num_bins = int(stats["hist"].numel())
    else:
        calibrator._calib_amax = stats["amax"].clone()


def get_amax(quantizer: Quantizer) -> torch.Tensor | None:
    amax = getattr(quantizer, "_amax", None)
    return None if amax is None else amax.detach()


def set_amax(quantizer: Quantizer, amax: torch.Tensor) -> None:
    """Store a calibrated amax (creating the buffer on first use, on the quantizer's device)."""
    amax = amax.detach().float()
    if "_amax" in quantizer._buffers:
        quantizer._amax = amax.to(quantizer._amax.device).reshape(quantizer._amax.shape) \
            if quantizer._amax.numel() == amax.numel() else amax
    else:
        quantizer.register_buffer("_amax", amax)
    if quantizer._learn_amax:
        quantizer.init_learn_amax()


def set_enabled(quantizer: Quantizer, enabled: bool) -> None:
    if enabled:
        quantizer.enable()
    else:
        quantizer.disable()


def is_enabled(quantizer: Quantizer) -> bool:
    return not quantizer._disabled


def fake_quant_export_mode(enabled: bool) -> None:
    """Switch pytorch-quantization to torch's native fake-quant ops (exported as ONNX Q/DQ)."""
    Quantizer.use_fb_fake_quant = enabled
