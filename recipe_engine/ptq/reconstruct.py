"""Adaptive rounding (AdaRound, Nagel et al. 2020) of the weights of one unit: a layer or a block.

Each weight ``w`` on its quantizer's grid (``scale`` per channel, the calibrated amax unchanged)
becomes ``scale * clamp(floor(w / scale) + h(V), qmin, qmax)`` with a learned ``V`` and the
rectified sigmoid ``h(V) = clamp(sigmoid(V) * 1.2 - 0.1, 0, 1)``, initialised so that ``h`` equals
the fractional part (the soft weight starts at the float weight). The loss is the unit's output
error against the FP32 reference (relative MSE; over active voxels for spconv outputs), plus
``reg_weight * mean(1 - |2h - 1|^beta)`` after a warm-up, ``beta`` annealed linearly (20 -> 2 by
default), which drives every ``h`` to 0 or 1; optionally plus ``task_loss`` times the error of the
whole model's output against the FP32 model's. At the end ``V >= 0`` rounds up: the weights
written are float values on the integer grid with the same amax, so fake quantization (and a Q/DQ
export) reproduces them exactly.

The unit's inputs come from the quantized model as it is when the unit is reached (earlier units
already rounded), its targets from the FP32 reference. The gradient reaches ``V`` through the
layer's own weight parameter (the soft weight is copied into it, the parameter's gradient is then
chained back), so any backend's quantized module and spconv's own convolution run unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..util.progress import progress
from .context import (
    Layer,
    PtqContext,
    Record,
    capture,
    flat_tensors,
    frozen,
    outputs_of,
    relative_error,
    run_module,
    weight_quantizers_off,
)
from .weights import Grid, from_view, weight_grid, weight_view

ZETA, GAMMA = 1.1, -0.1


@dataclass
class SoftRounding:
    """The rounding variables of one layer's weight."""

    layer: Layer
    grid: Grid
    floor: torch.Tensor
    alpha: nn.Parameter

    @classmethod
    def of(cls, layer: Layer) -> SoftRounding:
        grid = weight_grid(layer.module)
        view = weight_view(layer.module, layer.module.weight.detach()).float()
        scaled = view / grid.scale
        floor = torch.floor(scaled)
        rest = (scaled - floor).clamp(0.0, 1.0 - 1e-6)
        alpha = -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)
        return cls(layer, grid, floor, nn.Parameter(alpha))

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def soft(self) -> torch.Tensor:
        return self.grid.scale * torch.clamp(self.floor + self.h(), self.grid.qmin, self.grid.qmax)

    def hard(self) -> torch.Tensor:
        up = (self.alpha.detach() >= 0).float()
        return self.grid.scale * torch.clamp(self.floor + up, self.grid.qmin, self.grid.qmax)

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1.0 - (2.0 * self.h() - 1.0).abs().pow(beta)).mean()


def _beta(settings, iteration: int) -> float | None:
    """The annealed exponent at ``iteration`` (None during the warm-up: no regulariser)."""
    start = int(settings.warmup * settings.iterations)
    if iteration < start:
        return None
    progress_ = (iteration - start) / max(1, settings.iterations - start)
    first, last = settings.beta
    return last + (first - last) * max(0.0, 1.0 - progress_)


def _copy_into_weights(roundings: list[SoftRounding], views: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for rounding, view in zip(roundings, views, strict=True):
            module = rounding.layer.module
            module.weight.copy_(from_view(module, view.detach()).to(module.weight.dtype))


class _Task:
    """The whole-model term: FP32 outputs per batch, and a forward that also yields the unit's output."""

    def __init__(self, ctx: PtqContext, unit: str, batches: list):
        self.ctx, self.unit = ctx, unit
        self.batches = batches
        with torch.no_grad():
            self.targets = [flat_tensors(ctx.forward(ctx.reference, b)) for b in batches]

    def run(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        module = dict(self.ctx.model.named_modules())[self.unit]
        seen: list = []
        handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out) if not seen else None)
        try:
            final = flat_tensors(self.ctx.forward(self.ctx.model, self.batches[index]))
        finally:
            handle.remove()
        task = sum(relative_error(o, t) for o, t in zip(final, self.targets[index], strict=True)) / max(1, len(final))
        return outputs_of(seen[0]), task


def unit_error(module: nn.Module, inputs: list[Record], targets: list[torch.Tensor]) -> float:
    """Mean relative output error of ``module`` (as it is now) over the recorded inputs."""
    with torch.no_grad():
        errors = [float(relative_error(outputs_of(run_module(module, r)), t)) for r, t in zip(inputs, targets, strict=True)]
    return sum(errors) / len(errors)


def reconstruct(ctx: PtqContext, unit: str, layers: list[Layer], settings, description: str) -> dict:
    """Learn the rounding of ``layers`` (all inside module ``unit``) against ``unit``'s FP32 output."""
    modules = dict(ctx.model.named_modules())
    module = modules[unit]
    batches = ctx.data(settings.batches)
    inputs = capture(ctx.model, ctx.forward, batches, [unit], what=ctx.label)[unit]
    reference = capture(ctx.reference, ctx.forward, batches, [unit], what=ctx.label)[unit]
    targets = [outputs_of(r.output) for r in reference]
    before = unit_error(module, inputs, targets)
    roundings = [SoftRounding.of(layer) for layer in layers]
    originals = [layer.module.weight.detach().clone() for layer in layers]
    optimizer = torch.optim.Adam([r.alpha for r in roundings], lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    task = _Task(ctx, unit, batches) if settings.task_loss > 0 else None
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        with frozen(ctx.model), weight_quantizers_off(layers):
            for layer in layers:
                layer.module.weight.requires_grad_(True)
            steps = progress(range(settings.iterations), total=settings.iterations, description=description,
                             enabled=ctx.show_progress)
            for iteration in steps:
                index = int(torch.randint(len(batches), (1,), generator=generator))
                views = [r.soft() for r in roundings]
                _copy_into_weights(roundings, views)
                for layer in layers:
                    layer.module.weight.grad = None
                if task is None:
                    loss = relative_error(outputs_of(run_module(module, inputs[index])), targets[index])
                else:
                    output, task_error = task.run(index)
                    loss = relative_error(output, targets[index]) + settings.task_loss * task_error
                loss.backward()
                beta = _beta(settings, iteration)
                surrogate = sum((view * weight_view(r.layer.module, r.layer.module.weight.grad)).sum()
                                for view, r in zip(views, roundings, strict=True))
                if beta is not None and settings.reg_weight > 0:
                    surrogate = surrogate + settings.reg_weight * sum(r.regulariser(beta) for r in roundings)
                optimizer.zero_grad()
                surrogate.backward()
                optimizer.step()
            _copy_into_weights(roundings, [r.hard() for r in roundings])
    except BaseException:
        with torch.no_grad():
            for layer, weight in zip(layers, originals, strict=True):
                layer.module.weight.copy_(weight)
        raise
    finally:
        for layer in layers:
            layer.module.weight.grad = None
        ctx.model.train(was_training)
    after = unit_error(module, inputs, targets)
    flipped = sum(int((r.hard() != r.grid.nearest(weight_view(r.layer.module, w.float()))).sum())
                  for r, w in zip(roundings, originals, strict=True))
    return {"unit": unit, "layers": [layer.name for layer in layers], "error_nearest": before,
            "error_after": after, "changed_weights": flipped}
