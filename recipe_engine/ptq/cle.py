"""Cross-layer equalisation (Nagel et al. 2019) of conv-ReLU-conv chains, dense and sparse.

For a pair ``A -> ReLU -> B`` (ReLU a module, or A's fused spconv activation), ``ReLU(x / s) =
ReLU(x) / s`` for ``s > 0``, so dividing A's output channel ``c`` (weight and bias) by ``s_c`` and
multiplying B's input channel ``c`` by ``s_c`` leaves the FP32 function unchanged. With
``s_c = sqrt(r_A[c] / r_B[c])`` (``r``: the channel's largest absolute weight) both ranges become
``sqrt(r_A r_B)``, which per-channel and per-tensor grids share better. Weights are read through
:func:`~.weights.oi_view` (spconv's ``[O, k.., I]``, and the ``features @ weight.reshape(I, O)``
layout of its kernel-size-1 layers; ConvTranspose's ``[I, O, k..]``); B may be a depthwise conv.

Pairs are found on one batch (quantizers off): B's input tensor is the output of a ReLU module whose
input is A's output (possibly through Identity modules such as folded BNs), or A's own output when A
has a fused ReLU. A hook cannot see other readers of A's output (a residual add), so each pair is
checked: the FP32 model's output on the calibration batches must stay within ``tolerance`` (relative),
else the pair is undone and reported. Afterwards the weight amax of every changed layer and the
amax of the input quantizers of the B layers are computed afresh (their ranges changed), and the
FP32 reference of later steps is refreshed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

from ..quant import backend, sparse
from ..recipe.errors import RecipeError
from .context import Layer, PtqContext, capture, flat_tensors, outputs_of
from .settings import CleStep
from .weights import fresh_amax, from_oi, oi_view, refresh_statistics, supports_oi, weight_view


def _is_depthwise(module: nn.Module) -> bool:
    groups = getattr(module, "groups", 1)
    return groups > 1 and groups == getattr(module, "in_channels", 0) == getattr(module, "out_channels", 0)


def _pairable_second(module: nn.Module) -> bool:
    return supports_oi(module) and (getattr(module, "groups", 1) == 1 or _is_depthwise(module))


def find_pairs(ctx: PtqContext, layers: list[Layer]) -> list[tuple[str, str]]:
    """``(A, B)`` module paths whose output/input are joined by a ReLU only (see the module docstring)."""
    names = {layer.name for layer in layers}
    producer: dict[int, str] = {}  # id(tensor) -> first module that returned it
    relu_input: dict[int, int] = {}  # id(ReLU output) -> id(ReLU input)
    reads: list[tuple[str, int]] = []
    keep: list = []  # keep the traced tensors alive so that their ids stay unique

    def hook(name: str):
        def record(module, args, output):
            first = args[0] if args else None
            if not isinstance(first, torch.Tensor) and not sparse.is_sparse_tensor(first):
                return
            tensor_in, tensor_out = outputs_of(first), flat_tensors(output)
            if not tensor_out:
                return
            keep.extend([tensor_in, tensor_out[0]])
            producer.setdefault(id(tensor_out[0]), name)
            if isinstance(module, nn.ReLU):
                relu_input[id(tensor_out[0])] = id(tensor_in)
            if name in names:
                reads.append((name, id(tensor_in)))
        return record

    reference = ctx.reference
    handles = [m.register_forward_hook(hook(n)) for n, m in reference.named_modules()
               if n and not backend.is_quantizer(m)]
    try:
        with torch.no_grad():
            ctx.forward(reference, ctx.batches[0])
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(reference.named_modules())
    pairs = []
    for second, tensor in reads:
        first = None
        if tensor in relu_input:
            first = producer.get(relu_input[tensor])
        elif producer.get(tensor) in names and sparse.activation_name(modules[producer[tensor]]) == "ReLU":
            first = producer[tensor]
        if first in names and first != second and supports_oi(modules[first]) and _pairable_second(modules[second]):
            pairs.append((first, second))
    return list(dict.fromkeys(pairs))


def _ranges(module: nn.Module, role: str) -> torch.Tensor:
    view = oi_view(module, module.weight.detach().double()).abs()
    if role == "out" or _is_depthwise(module):
        return view.amax(dim=(1, 2))
    return view.amax(dim=(0, 2))


def channel_ranges(first: nn.Module, second: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest |weight| per channel: A's output channels, B's matching input channels."""
    return _ranges(first, "out"), _ranges(second, "in")


def equalise(first: nn.Module, second: nn.Module, max_scale: float) -> None:
    """Rescale the shared channels of ``first -> ReLU -> second`` in place."""
    range_a, range_b = channel_ranges(first, second)
    if range_a.numel() != range_b.numel():
        raise ValueError(f"{range_a.numel()} output channels feed {range_b.numel()} input channels")
    scale = torch.sqrt(range_a / range_b.clamp_min(1e-30))
    scale = torch.where((range_a > 0) & (range_b > 0), scale, torch.ones_like(scale)).clamp(1 / max_scale, max_scale)
    with torch.no_grad():
        w_a = oi_view(first, first.weight.detach().double()) / scale[:, None, None]
        first.weight.copy_(from_oi(first, w_a, first.weight).to(first.weight.dtype))
        if first.bias is not None:
            first.bias.copy_((first.bias.double() / scale).to(first.bias.dtype))
        w_b = oi_view(second, second.weight.detach().double())
        w_b = w_b * (scale[:, None, None] if _is_depthwise(second) else scale[None, :, None])
        second.weight.copy_(from_oi(second, w_b, second.weight).to(second.weight.dtype))


def quantizers_off(ctx: PtqContext) -> AbstractContextManager[None]:
    """Every enabled quantizer of the model off inside the block (the FP32 function)."""
    return backend.switched_off(q for _, q in ctx.state.unique() if backend.is_enabled(q))


def _fp32_outputs(ctx: PtqContext, batches: list) -> list[list[torch.Tensor]]:
    with torch.no_grad(), quantizers_off(ctx):
        return [[t.detach().clone() for t in flat_tensors(ctx.forward(ctx.model, b))] for b in batches]


def _deviation(now: list[list[torch.Tensor]], then: list[list[torch.Tensor]]) -> float:
    worst = 0.0
    for outs, refs in zip(now, then, strict=True):
        for out, ref in zip(outs, refs, strict=True):
            worst = max(worst, float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-12))
    return worst


def _snapshot(modules: list[nn.Module]) -> list[dict]:
    return [{k: v.detach().clone() for k, v in m.named_parameters(recurse=False)} for m in modules]


def _restore(modules: list[nn.Module], saved: list[dict]) -> None:
    with torch.no_grad():
        for module, params in zip(modules, saved, strict=True):
            for key, value in params.items():
                getattr(module, key).copy_(value)


def cle(ctx: PtqContext, settings: CleStep) -> dict:
    layers = ctx.layers(settings, "weight")
    modules = dict(ctx.model.named_modules())
    if settings.pairs is not None:
        known = {layer.name for layer in layers}
        for index, pair in enumerate(settings.pairs):
            for name in pair:
                if name not in known:
                    raise RecipeError(f"{ctx.label}.pairs[{index}]: {name!r} is not a quantized layer of the step",
                                      hint="give [first, second] module paths of quantized conv/linear layers")
        pairs = [tuple(p) for p in settings.pairs]
    else:
        pairs = find_pairs(ctx, layers)
    batches = ctx.data(settings.batches)
    baseline = _fp32_outputs(ctx, batches)
    kept, undone = [], []
    for first, second in pairs:
        members = [modules[first], modules[second]]
        saved = _snapshot(members)
        equalise(*members, settings.max_scale)
        if _deviation(_fp32_outputs(ctx, batches[:1]), baseline[:1]) > settings.tolerance:
            _restore(members, saved)
            undone.append([first, second])
        else:
            kept.append((first, second))
    for _ in range(settings.iterations - 1):
        for first, second in kept:
            equalise(modules[first], modules[second], settings.max_scale)
    deviation = _deviation(_fp32_outputs(ctx, batches), baseline)
    shared = _recalibrate(ctx, kept, modules)
    ctx.refresh_reference()
    return {"pairs": [list(p) for p in kept], "undone": undone, "fp32_max_relative_change": deviation,
            "shared_inputs_not_recalibrated": shared}


def _recalibrate(ctx: PtqContext, pairs: list[tuple[str, str]], modules: dict[str, nn.Module]) -> list[str]:
    """Fresh weight amax for every changed layer, fresh input amax for every second layer; returns the
    shared input quantizers left as they were."""
    changed = list(dict.fromkeys(name for pair in pairs for name in pair))
    for name in changed:
        module = modules[name]
        quantizer = backend.module_quantizer(module, "weight")
        if quantizer is not None and not ctx.state.is_fixed(quantizer):
            view = weight_view(module, module.weight.detach())
            backend.set_amax(quantizer, fresh_amax(quantizer, [view], ctx.method_of(quantizer), ctx.calibration))
    readers = [name for name in dict.fromkeys(second for _, second in pairs)
               if backend.module_quantizer(modules[name], "input") is not None]
    readers = [n for n in readers if backend.is_enabled(backend.module_quantizer(modules[n], "input"))]
    if not readers:
        return []
    batches = ctx.data(ctx.calibration.batches or len(ctx.batches))
    with quantizers_off(ctx):  # statistics of the FP32 function, as calibration collects them
        inputs = capture(ctx.model, ctx.forward, batches, readers, what=ctx.label)
    names_of = {id(q): names for names, q in ctx.state.unique()}
    shared = []
    for name in readers:
        quantizer = backend.module_quantizer(modules[name], "input")
        if ctx.state.is_fixed(quantizer):
            continue
        if len(names_of.get(id(quantizer), [])) > 1:  # also reads tensors the pair did not change
            shared.append(f"{name}.input")
            continue
        seen = [outputs_of(r.args[0]) for r in inputs[name]]
        backend.set_amax(quantizer, fresh_amax(quantizer, seen, ctx.method_of(quantizer), ctx.calibration))
        refresh_statistics(quantizer, seen, ctx.calibration)  # the report's histograms: what it now reads
    return shared
