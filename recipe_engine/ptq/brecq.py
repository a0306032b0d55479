"""BRECQ-style block reconstruction: the rounding of all quantized layers of a block learned together
against the block's FP32 output (see :mod:`.reconstruct`); layers outside every block go one by one.

Blocks are the modules matched by ``blocks:`` (module path patterns) or, by default, the modules of
the types the recipe folds as residual blocks (``fuse[].block``). Blocks nested in other blocks are
left to the outer one.
"""

from __future__ import annotations

from ..recipe.errors import RecipeError
from ..select import match_any
from .adaround import summarize
from .context import Layer, PtqContext
from .reconstruct import reconstruct
from .settings import BrecqStep


def _blocks(ctx: PtqContext, settings: BrecqStep) -> list[str]:
    named = [(name, module) for name, module in ctx.model.named_modules() if name]
    if settings.blocks is not None:
        found = [name for name, _ in named if match_any(settings.blocks, name)]
        if not found:
            raise RecipeError(f"{ctx.label}.blocks: {settings.blocks!r} matches no module",
                              hint="give module paths of the blocks (glob or re:), e.g. 'encoder.conv*.*'")
    elif ctx.block_types:
        found = [name for name, module in named if isinstance(module, ctx.block_types)]
    else:
        raise RecipeError(f"{ctx.label}: brecq needs blocks: the recipe declares no `fuse[].block`",
                          hint="set `blocks:` to the module paths of the blocks (glob or re:)")
    outer = [name for name in found if not any(name.startswith(other + ".") for other in found)]
    return outer


def brecq(ctx: PtqContext, settings: BrecqStep) -> dict:
    layers = ctx.layers(settings, "weight")
    blocks = _blocks(ctx, settings)
    units: list[tuple[str, list[Layer]]] = []
    placed: dict[str, int] = {}
    for layer in layers:  # execution order: a block is reached with its first layer
        block = next((b for b in blocks if layer.name.startswith(b + ".")), None)
        if block is None:
            units.append((layer.name, [layer]))
        elif block in placed:
            units[placed[block]][1].append(layer)
        else:
            placed[block] = len(units)
            units.append((block, [layer]))
    results = [reconstruct(ctx, name, members, settings, f"brecq {i + 1}/{len(units)} {name}")
               for i, (name, members) in enumerate(units)]
    summary = summarize(results)
    summary["blocks"] = sum(1 for name, _ in units if name in placed)
    return summary
