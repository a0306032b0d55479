"""SmoothQuant-style scale migration (after Xiao et al. 2023): per input channel, activation range into the weight.

A layer ``y = W x`` whose input channels have very different ranges (raw lidar point features:
x, y out to 51 m, intensity 0-255 next to sub-metre offsets) loses the small channels to ONE
per-tensor input scale. With ``s_j > 0`` per input channel ``j``, ``y = (W diag(s)) (x / s)``: the
input quantizer sees ``x / s`` and the weight's input-channel slice ``j`` is multiplied by ``s_j``,
the FP32 function unchanged. With ``s_j = amax_x[j]^alpha / amax_w[j]^(1 - alpha)`` (``amax_x``:
the channel's largest |input| on the calibration batches, FP32 model; ``amax_w``: the largest |weight|
of the channel over all output channels and kernel positions) ``alpha`` moves the difficulty between
the two sides. Each candidate ``alpha`` is tried: the layer's input and weight amax are computed
afresh with the recipe's calibration method (input statistics of the FP32 model, divided by ``s``),
and the relative error of the layer's INT8 output against the FP32 reference's output of that layer
on the step's batches (calibration data) is measured; the best candidate is kept, and a layer that no
candidate improves is left as it was. Layers run in execution order, each on the inputs the already
smoothed quantized model gives it.

Where ``1/s`` lives: a buffer and a forward pre-hook of the layer's input quantizer
(:mod:`.input_scale`), so it is in the state dict (``model.pt``) and the ONNX export (a ``Mul``
before the input ``QuantizeLinear``). Dense Linear, Conv and ConvTranspose layers with ``groups == 1``
and one per-tensor input quantizer of their own are smoothed; spconv layers are not (the sparse
exports have no place for the scale), nor shared or fixed-amax quantizers: a ``layers:`` pattern
that names such a layer is an error, the default selection lists them as skipped.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import backend
from ..recipe.errors import RecipeError
from ..util.progress import progress
from . import input_scale
from .cle import quantizers_off
from .context import Layer, PtqContext, capture, outputs_of, relative_error, run_module
from .settings import SmoothStep
from .weights import fresh_amax, from_oi, layout, oi_view, refresh_statistics, weight_view


def refusal(ctx: PtqContext, layer: Layer, sharing: dict[int, list[str]]) -> str | None:
    """Why ``layer`` cannot be smoothed, or None."""
    module = layer.module
    if layer.is_sparse:
        return "a spconv layer (the sparse exports have no place for a per-channel input scale)"
    if layout(module) not in ("linear", "conv", "transposed") or getattr(module, "groups", 1) != 1:
        return "not a dense Linear/Conv/ConvTranspose with groups=1"
    q_in, q_w = layer.quantizer("input"), layer.quantizer("weight")
    if q_w is None or not backend.is_enabled(q_w):
        return "a layer without an enabled weight quantizer"
    if len(sharing.get(id(q_in), [])) > 1:
        return "a layer that reads its input through a shared quantizer (" + ", ".join(sharing[id(q_in)][:3]) + ")"
    if ctx.state.is_fixed(q_in) or ctx.state.is_fixed(q_w):
        return "a layer with a fixed amax"
    if backend.describe(q_in).get("axis") is not None:
        return "a layer with a per-channel input quantizer"
    return None


def _input_axis(module: nn.Module) -> int:
    return -1 if layout(module) == "linear" else 1


def _shaped(module: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """Per-input-channel ``values`` shaped to broadcast over the layer's input."""
    return values if layout(module) == "linear" else values.reshape(-1, *[1] * (module.weight.dim() - 2))


def channel_amax(tensors: list[torch.Tensor], axis: int) -> torch.Tensor:
    """Largest |value| per channel on ``axis`` over ``tensors``."""
    out = None
    for tensor in tensors:
        dims = [d for d in range(tensor.dim()) if d != axis % tensor.dim()]
        top = tensor.detach().abs().double().amax(dim=dims)
        out = top if out is None else torch.maximum(out, top)
    return out


def scales(amax_x: torch.Tensor, amax_w: torch.Tensor, alpha: float, max_scale: float) -> torch.Tensor:
    """``s_j = amax_x^alpha / amax_w^(1 - alpha)`` (1 where a side is all zero), clamped."""
    valid = (amax_x > 0) & (amax_w > 0)
    s = amax_x.clamp_min(1e-30) ** alpha / amax_w.clamp_min(1e-30) ** (1.0 - alpha)
    return torch.where(valid, s, torch.ones_like(s)).clamp(1.0 / max_scale, max_scale)


class _Smoother:
    """One layer: its original weight and input scale, FP32 statistics and error measurement."""

    def __init__(self, ctx: PtqContext, layer: Layer, calib_inputs: list[torch.Tensor], records: list,
                 targets: list[torch.Tensor]) -> None:
        self.ctx, self.layer, self.module = ctx, layer, layer.module
        self.q_in, self.q_w = layer.quantizer("input"), layer.quantizer("weight")
        self.weight = self.module.weight.detach().clone()
        found = input_scale.inverse_scale(self.q_in)
        self.inverse = None if found is None else found.detach().clone()
        self.amax = (backend.get_amax(self.q_in).detach().clone(), backend.get_amax(self.q_w).detach().clone())
        self.calib_inputs = calib_inputs  # FP32 model, the layer's own input (before any scale)
        self.records, self.targets = records, targets
        channels = self.weight.shape[1 if layout(self.module) != "transposed" else 0]
        base = torch.ones(channels, dtype=torch.float64, device=self.weight.device)
        self.base_inverse = base if self.inverse is None else self.inverse.double().flatten().to(base.device)
        seen = [x.double() * _shaped(self.module, self.base_inverse).to(x.device) for x in calib_inputs]
        self.amax_x = channel_amax(seen, _input_axis(self.module))
        self.amax_w = oi_view(self.module, self.weight.double()).abs().amax(dim=(0, 2))

    def error(self) -> float:
        total = 0.0
        with torch.no_grad():
            for record, target in zip(self.records, self.targets, strict=True):
                total += float(relative_error(outputs_of(run_module(self.module, record)), target))
        return total / max(len(self.records), 1)

    def apply(self, s: torch.Tensor) -> None:
        """Weight input channels times ``s``, quantizer input over ``s`` (on top of the original), fresh amax."""
        module, ctx = self.module, self.ctx
        w = oi_view(module, self.weight.double()) * s.to(self.weight.device)[None, :, None]
        inverse = _shaped(module, self.base_inverse / s).to(self.weight.device)
        with torch.no_grad():
            module.weight.copy_(from_oi(module, w, self.weight).to(self.weight.dtype))
        input_scale.install(self.q_in, inverse)
        seen = [x * inverse.to(x.dtype) for x in self.calib_inputs]
        backend.set_amax(self.q_in, fresh_amax(self.q_in, seen, ctx.method_of(self.q_in), ctx.calibration))
        self.seen = seen
        view = weight_view(module, module.weight.detach())
        backend.set_amax(self.q_w, fresh_amax(self.q_w, [view], ctx.method_of(self.q_w), ctx.calibration))

    def refresh_statistics(self) -> None:
        """The input quantizer's calibration statistics of what it now sees (the report's histograms and
        clipping figures read them; the ones calibration collected are of the unscaled input)."""
        refresh_statistics(self.q_in, self.seen, self.ctx.calibration)

    def restore(self) -> None:
        with torch.no_grad():
            self.module.weight.copy_(self.weight)
        if self.inverse is None:
            input_scale.uninstall(self.q_in)
        else:
            input_scale.install(self.q_in, self.inverse)
        backend.set_amax(self.q_in, self.amax[0])
        backend.set_amax(self.q_w, self.amax[1])


def smooth(ctx: PtqContext, settings: SmoothStep) -> dict:
    layers = ctx.layers(settings, "input")
    sharing = {id(q): names for names, q in ctx.state.unique()}
    chosen, skipped = [], []
    for layer in layers:
        reason = refusal(ctx, layer, sharing)
        if reason is None:
            chosen.append(layer)
        elif settings.layers is not None:
            raise RecipeError(f"{ctx.label}.layers: {layer.name} is {reason}; smooth cannot scale its input",
                              hint=f"leave it out (`exclude: [{layer.name}]`) or name dense layers only")
        else:
            skipped.append({"layer": layer.name, "reason": reason})
    batches = ctx.data(settings.batches)
    calib_batches = ctx.data(ctx.calibration.batches or len(ctx.batches))
    names = [layer.name for layer in chosen]
    reference = capture(ctx.reference, ctx.forward, batches, names, what=ctx.label) if names else {}
    results = []
    for layer in progress(chosen, total=len(chosen), description=f"{ctx.label} smooth", enabled=ctx.show_progress):
        with quantizers_off(ctx):  # statistics of the FP32 function, as calibration collects them
            fp32 = capture(ctx.model, ctx.forward, calib_batches, [layer.name], what=ctx.label)[layer.name]
        records = capture(ctx.model, ctx.forward, batches, [layer.name], what=ctx.label)[layer.name]
        targets = [outputs_of(r.output) for r in reference[layer.name]]
        smoother = _Smoother(ctx, layer, [outputs_of(r.args[0]) for r in fp32], records, targets)
        before = smoother.error()
        best, best_error = None, before
        for alpha in settings.candidates():
            s = scales(smoother.amax_x, smoother.amax_w, alpha, settings.max_scale)
            smoother.apply(s)
            error = smoother.error()
            if error < best_error:
                best, best_error = (alpha, s), error
        if best is None:
            smoother.restore()
            results.append({"layer": layer.name, "alpha": None, "error_before": before, "error_after": before})
            continue
        smoother.apply(best[1])
        smoother.refresh_statistics()
        results.append({"layer": layer.name, "alpha": best[0], "error_before": before, "error_after": best_error,
                        "scale_min": float(best[1].min()), "scale_max": float(best[1].max())})
    ctx.refresh_reference()
    return {"layers": sum(r["alpha"] is not None for r in results), "smoothed": results, "skipped": skipped}
