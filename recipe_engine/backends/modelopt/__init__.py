"""The NVIDIA Model-Optimizer (``nvidia-modelopt`` 0.47) backend: the only code that knows that library.

Quantizers are modelopt ``TensorQuantizer`` objects (INT8, or FP8 E4M3 for ``format: fp8_e4m3``) with
its ``MaxCalibrator``/``HistogramCalibrator``, which collect statistics exactly as
pytorch-quantization's do; the engine reads those statistics and computes amax with its own searches,
so both backends give the same amax for the same data. Dense modules become modelopt's quantized
classes in place (``QuantModuleRegistry.convert``: same object, same parameters). ONNX: INT8
quantizers trace to standard QuantizeLinear/DequantizeLinear; modelopt writes FP8 as
``trt::TRT_FP8QuantizeLinear`` custom ops, which :mod:`.fp8_onnx` rewrites into standard opset-19
FLOAT8E4M3FN Q/DQ that onnxruntime runs.

modelopt's ``mtq.quantize``/``mtq.calibrate`` flows are not used: the engine selects, shares, disables
and calibrates itself, and calls the objects below.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

with warnings.catch_warnings():  # modelopt warns about missing CUDA extensions on CPU-only machines
    warnings.simplefilter("ignore")
    from modelopt.torch.quantization.calib import HistogramCalibrator, MaxCalibrator
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import QuantModule, QuantModuleRegistry, TensorQuantizer

logging.getLogger("modelopt").setLevel(logging.ERROR)

FP8_E4M3 = (4, 3)
# torch classes this backend quantizes -> (has weight, output-channel axis of the weight): the same set
# as the pytorch-quantization backend, so a recipe selects the same layers on both.
DENSE: dict[type, tuple[bool, int]] = {
    nn.Conv1d: (True, 0), nn.Conv2d: (True, 0), nn.Conv3d: (True, 0),
    nn.ConvTranspose1d: (True, 1), nn.ConvTranspose2d: (True, 1), nn.ConvTranspose3d: (True, 1),
    nn.Linear: (True, 0),
    nn.MaxPool1d: (False, 0), nn.MaxPool2d: (False, 0), nn.MaxPool3d: (False, 0),
    nn.AvgPool1d: (False, 0), nn.AvgPool2d: (False, 0), nn.AvgPool3d: (False, 0),
    nn.AdaptiveAvgPool1d: (False, 0), nn.AdaptiveAvgPool2d: (False, 0), nn.AdaptiveAvgPool3d: (False, 0),
}
_SLOTS = {"input": "input_quantizer", "weight": "weight_quantizer"}


def _original_class(module: nn.Module) -> type | None:
    """The torch class a modelopt quantized module was converted from."""
    for cls in type(module).__mro__:
        if cls in DENSE:
            return cls
    return None


class ModeloptBackend:
    name = "modelopt"

    # -- quantizer objects ------------------------------------------------------------------
    def make_quantizer(self, spec, calibration, channel_axis: int | None = None) -> TensorQuantizer:
        axis = spec.axis if spec.axis is not None else (channel_axis if spec.per_channel else None)
        if spec.learn_amax:
            raise ValueError("learn_amax is not supported by the modelopt backend (modelopt 0.47 deprecates it)")
        fp8 = getattr(spec, "format", "int") == "fp8_e4m3"
        if fp8 and (axis is not None or spec.unsigned):
            raise ValueError("format fp8_e4m3 is per tensor and signed here: remove per_channel/axis/unsigned")
        if fp8 and spec.calibrator != "max":
            raise ValueError("format fp8_e4m3 is calibrated by max (the amax searches model integer grids): "
                             "set calibrator: max")
        config = QuantizerAttributeConfig(
            num_bits=FP8_E4M3 if fp8 else spec.num_bits, axis=axis, unsigned=spec.unsigned,
            narrow_range=spec.narrow_range, fake_quant=spec.fake_quant, calibrator="max",
        )
        quantizer = TensorQuantizer(config)
        if spec.calibrator == "histogram":
            quantizer._calibrator = HistogramCalibrator(
                spec.num_bits, axis, spec.unsigned, num_bins=calibration.num_bins, skip_zeros=calibration.skip_zeros)
        if spec.amax is not None:
            quantizer.amax = torch.tensor(float(spec.amax))
        return quantizer

    def identity_quantizer(self) -> TensorQuantizer:
        quantizer = TensorQuantizer(QuantizerAttributeConfig(num_bits=8))
        quantizer.disable()
        return quantizer

    def owns(self, obj: object) -> bool:
        return isinstance(obj, TensorQuantizer)

    def describe(self, quantizer: TensorQuantizer) -> dict:
        fp8 = quantizer._num_bits == FP8_E4M3
        axis = quantizer.axis
        return {
            "num_bits": 8 if fp8 else quantizer._num_bits,
            "axis": tuple(axis) if isinstance(axis, list) else axis,
            "unsigned": quantizer.unsigned,
            "narrow_range": quantizer.narrow_range,
            "calibrator": "histogram" if isinstance(quantizer._calibrator, HistogramCalibrator) else "max",
            "format": "fp8_e4m3" if fp8 else "int",
            "enabled": quantizer.is_enabled,
        }

    # -- statistics and amax --------------------------------------------------------------
    def start_statistics(self, quantizer: TensorQuantizer) -> None:
        quantizer.disable_quant()
        quantizer.enable_calib()

    def stop_statistics(self, quantizer: TensorQuantizer) -> None:
        quantizer._if_calib = False  # modelopt 0.47 declares disable_calib as a property
        quantizer.enable_quant()

    def statistics(self, quantizer: TensorQuantizer) -> dict | None:
        calibrator = quantizer._calibrator
        if isinstance(calibrator, HistogramCalibrator):
            if calibrator._calib_hist is None:
                return None
            return {"hist": torch.as_tensor(calibrator._calib_hist).detach(),
                    "edges": torch.as_tensor(calibrator._calib_bin_edges).detach()}
        amax = calibrator._calib_amax if isinstance(calibrator, MaxCalibrator) else None
        return None if amax is None else {"amax": amax.detach()}

    def load_statistics(self, quantizer: TensorQuantizer, stats: dict) -> None:
        calibrator = quantizer._calibrator
        if isinstance(calibrator, HistogramCalibrator):
            calibrator._calib_hist = stats["hist"].float()
            calibrator._calib_bin_edges = stats["edges"].float()
            calibrator._num_bins = int(stats["hist"].numel())
        else:
            calibrator._calib_amax = stats["amax"].clone()

    def get_amax(self, quantizer: TensorQuantizer) -> torch.Tensor | None:
        amax = quantizer._buffers.get("_amax")
        return None if amax is None else amax.detach()

    def set_amax(self, quantizer: TensorQuantizer, amax: torch.Tensor) -> None:
        amax = amax.detach().float()
        current = quantizer._buffers.get("_amax")
        if current is not None:
            if current.numel() == amax.numel():
                current.copy_(amax.to(current.device).reshape(current.shape))
                return
            del quantizer._buffers["_amax"]
        quantizer.register_buffer("_amax", amax.clone())

    def set_enabled(self, quantizer: TensorQuantizer, enabled: bool) -> None:
        if enabled:
            quantizer.enable()
        else:
            quantizer.disable()

    def is_enabled(self, quantizer: TensorQuantizer) -> bool:
        return quantizer.is_enabled

    # -- modules --------------------------------------------------------------------------
    def dense_info(self, module: nn.Module) -> tuple[bool, int] | None:
        if type(module) in DENSE:
            return DENSE[type(module)]
        if isinstance(module, QuantModule):
            original = _original_class(module)
            return DENSE[original] if original else None
        return None

    def swap_dense_module(self, module: nn.Module, input_quantizer, weight_quantizer) -> nn.Module:
        info = self.dense_info(module)
        if info is None:
            current = type(module)
            raise TypeError(f"no quantized version of {current.__module__}.{current.__qualname__}")
        if not isinstance(module, QuantModule):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                QuantModuleRegistry.convert(module)  # in place: the class changes, parameters stay
        module.input_quantizer = input_quantizer or self.identity_quantizer()
        if info[0]:
            module.weight_quantizer = weight_quantizer or self.identity_quantizer()
        return module

    def module_quantizer(self, module: nn.Module, role: str):
        if not isinstance(module, QuantModule):
            return None
        return getattr(module, _SLOTS[role], None)

    def set_module_quantizer(self, module: nn.Module, role: str, quantizer) -> None:
        setattr(module, _SLOTS[role], quantizer)

    # -- export and loading -------------------------------------------------------------
    @contextmanager
    def export_mode(self) -> Iterator[None]:
        """modelopt's quantizers trace to Q/DQ by themselves; warnings of its symbolic functions are muted."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="modelopt")
            yield

    def finish_onnx(self, model) -> int:
        """Rewrite modelopt's FP8 custom ops into standard FLOAT8E4M3FN Q/DQ (see :mod:`.fp8_onnx`)."""
        from .fp8_onnx import to_standard_fp8

        return to_standard_fp8(model)

    def load_state_dict(self, model: nn.Module, state_dict: dict, strict: bool = True):
        """Register the ``_amax`` buffers a fresh model lacks (on the device of the model), then load."""
        for name, module in model.named_modules():
            key = f"{name}._amax" if name else "_amax"
            if isinstance(module, TensorQuantizer) and key in state_dict and "_amax" not in module._buffers:
                device = next((t.device for t in model.parameters()), torch.device("cpu"))
                module.register_buffer("_amax", torch.empty_like(state_dict[key], device=device))
        return model.load_state_dict(state_dict, strict=strict)


BACKEND = ModeloptBackend()
