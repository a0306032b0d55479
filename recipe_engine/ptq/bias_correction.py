"""Empirical bias correction: remove each quantized layer's mean output error, channel by channel.

For every quantized conv/linear layer with a bias (folded BN gives convs one), in execution order:
the mean of ``FP32 output - quantized output`` per output channel over the calibration batches
(every position of a dense output; the active voxels of a spconv output) is added to the bias. The
error is measured before a fused activation (spconv ``act_type``), where the bias acts. The inputs of
each layer come from the quantized model with the layers before it already corrected, the targets
from the FP32 reference on its own inputs, so the quantized model's mean output error of every
corrected layer is zero on those batches. Layers without a bias are left alone (a new bias would
change the model's state dict).
"""

from __future__ import annotations

import torch

from .context import Layer, PtqContext, capture, fused_activation_off, outputs_of, run_module
from .settings import BiasCorrectionStep


def channel_mean(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    dim = dim % tensor.dim()
    return tensor.double().mean(dim=[d for d in range(tensor.dim()) if d != dim])


def mean_error(ctx: PtqContext, layer: Layer, batches: list, reference_inputs: list) -> torch.Tensor:
    """Per-channel mean of FP32 minus quantized pre-activation output over ``batches``."""
    inputs = capture(ctx.model, ctx.forward, batches, [layer.name], what=ctx.label)[layer.name]
    reference = dict(ctx.reference.named_modules())[layer.name]
    total, count = None, 0
    with torch.no_grad(), fused_activation_off(layer.module, reference):
        for quantized_in, fp_in in zip(inputs, reference_inputs, strict=True):
            error = outputs_of(run_module(reference, fp_in)) - outputs_of(run_module(layer.module, quantized_in))
            weight = error.numel() // error.shape[layer.channel_dim()]
            part = channel_mean(error, layer.channel_dim()) * weight
            total = part if total is None else total + part
            count += weight
    return total / max(count, 1)


def bias_correction(ctx: PtqContext, settings: BiasCorrectionStep) -> dict:
    batches = ctx.data(settings.batches)
    layers = ctx.layers(settings, "weight")
    corrected, largest = [], 0.0
    with_bias = [layer for layer in layers if getattr(layer.module, "bias", None) is not None]
    skipped = [layer.name for layer in layers if layer not in with_bias]
    names = [layer.name for layer in with_bias]
    reference_inputs = capture(ctx.reference, ctx.forward, batches, names, what=ctx.label) if names else {}
    for layer in with_bias:
        shift = mean_error(ctx, layer, batches, reference_inputs[layer.name])
        bias = layer.module.bias
        with torch.no_grad():
            bias.add_(shift.to(bias.dtype).reshape(bias.shape))
        largest = max(largest, float(shift.abs().max()))
        corrected.append(layer.name)
    return {"layers": len(corrected), "corrected": corrected, "skipped_no_bias": skipped,
            "largest_shift": largest}
