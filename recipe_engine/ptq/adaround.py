"""AdaRound: the rounding of each quantized layer's weights learned layer by layer (see :mod:`.reconstruct`).

Dense Conv/ConvTranspose/Linear layers and spconv convolutions (whose output error is measured on
the active voxels only). Layers are visited in execution order, so each layer's inputs include the
rounding already chosen for the layers before it.
"""

from __future__ import annotations

from .context import PtqContext
from .reconstruct import reconstruct
from .settings import AdaRoundStep


def adaround(ctx: PtqContext, settings: AdaRoundStep) -> dict:
    layers = ctx.layers(settings, "weight")
    units = []
    for index, layer in enumerate(layers):
        units.append(reconstruct(ctx, layer.name, [layer], settings,
                                 f"adaround {index + 1}/{len(layers)} {layer.name}"))
    return summarize(units)


def summarize(units: list[dict]) -> dict:
    """The step's record: per unit errors (relative MSE of its output vs FP32) before and after."""
    before = [u["error_nearest"] for u in units]
    after = [u["error_after"] for u in units]
    return {
        "units": units,
        "layers": sum(len(u["layers"]) for u in units),
        "mean_error_nearest": sum(before) / len(before) if before else 0.0,
        "mean_error_after": sum(after) / len(after) if after else 0.0,
    }
