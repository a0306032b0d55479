"""Measurements for the PTQ tests, taken independently of the algorithms' own records."""

from __future__ import annotations

import torch
from torch import nn

from recipe_engine.data import default_forward
from recipe_engine.quant import backend


def outputs(model: nn.Module, name: str, batches: list, forward=default_forward, pre_activation=False) -> list:
    """The output of module ``name`` on each batch (features for spconv)."""
    module = dict(model.named_modules())[name]
    seen: list = []

    def hook(_m, _a, out):
        seen.append((out.features if hasattr(out, "features") else out).detach().clone())

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        handle.remove()
    return seen


def layer_mse(reference: nn.Module, model: nn.Module, name: str, batches: list, forward=default_forward) -> float:
    ref = outputs(reference, name, batches, forward)
    got = outputs(model, name, batches, forward)
    return float(sum(((a - b) ** 2).mean() for a, b in zip(got, ref, strict=True)) / len(ref))


def weights_on_grid(module: nn.Module) -> float:
    """Largest |fake_quant(w) - w| relative to the weight range: 0 when w lies on the quantizer's grid."""
    from recipe_engine.ptq.weights import weight_view

    quantizer = backend.module_quantizer(module, "weight")
    view = weight_view(module, module.weight.detach())
    with torch.no_grad():
        return float((quantizer(view) - view).abs().max() / view.abs().max())
