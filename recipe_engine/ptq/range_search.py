"""Activation ranges that minimise the error of the layer's output, not of the tensor (LiDAR-PTQ style).

For every enabled per-tensor input quantizer of a quantized conv/linear layer (in execution order;
a quantizer shared by several layers counts all of them), the candidates are
``ratio * max|x|`` for ``grid`` ratios evenly spaced from ``min_ratio`` to 1, where ``x`` is what the
quantizer sees on the calibration batches (the quantized model as it is when the layer is reached).
Each candidate is scored by the relative error of the layers' outputs (with their quantized weights;
active voxels for spconv) against the FP32 reference's outputs of the same layers, and the best one
becomes the amax. Op-site quantizers (add, cat) and quantizers with a fixed amax are left alone; a
shared quantizer is scored on its layer readers only.
"""

from __future__ import annotations

import torch

from ..quant import backend
from .context import Layer, PtqContext, capture, outputs_of, relative_error, run_module
from .input_scale import seen_by
from .settings import RangeSearchStep


def _first_tensor(record) -> torch.Tensor:
    value = record.args[0] if record.args else next(iter(record.kwargs.values()))
    return outputs_of(value)


def layer_output_error(ctx: PtqContext, layers: list[Layer], inputs: dict, targets: dict) -> float:
    total = 0.0
    with torch.no_grad():
        for layer in layers:
            for record, target in zip(inputs[layer.name], targets[layer.name], strict=True):
                total += float(relative_error(outputs_of(run_module(layer.module, record)), target))
    return total


def range_search(ctx: PtqContext, settings: RangeSearchStep) -> dict:
    batches = ctx.data(settings.batches)
    layers = ctx.layers(settings, "input")
    groups: dict[int, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(id(layer.quantizer("input")), []).append(layer)
    names = [layer.name for layer in layers]
    reference = capture(ctx.reference, ctx.forward, batches, names, what=ctx.label) if names else {}
    targets = {name: [outputs_of(r.output) for r in records] for name, records in reference.items()}
    state = ctx.state
    results, skipped = [], []
    for members in groups.values():
        quantizer = members[0].quantizer("input")
        label = f"{members[0].name}.input"
        if state.is_fixed(quantizer) or backend.describe(quantizer).get("axis") is not None:
            skipped.append(label)
            continue
        inputs = capture(ctx.model, ctx.forward, batches, [m.name for m in members], what=ctx.label)
        top = max(float(seen_by(quantizer, _first_tensor(r)).detach().abs().max())  # after a smooth scale
                  for m in members for r in inputs[m.name])
        if top <= 0:
            skipped.append(label)
            continue
        previous = backend.get_amax(quantizer).detach().clone()
        before = layer_output_error(ctx, members, inputs, targets)
        best, best_error = None, float("inf")
        for ratio in torch.linspace(settings.min_ratio, 1.0, settings.grid).tolist():
            backend.set_amax(quantizer, torch.tensor(ratio * top))
            error = layer_output_error(ctx, members, inputs, targets)
            if error < best_error:
                best, best_error = ratio * top, error
        if best_error < before:
            backend.set_amax(quantizer, torch.tensor(best))
        else:  # the calibrated amax was already better than every candidate
            backend.set_amax(quantizer, previous)
            best, best_error = float(previous.max()), before
        results.append({"quantizer": label, "amax_before": float(previous.max()), "amax": best,
                        "error_before": before / len(batches), "error_after": best_error / len(batches)})
    return {"quantizers": len(results), "searched": results, "skipped": skipped}
