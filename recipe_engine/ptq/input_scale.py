"""A per-input-channel scale in front of an input quantizer: where the ``smooth`` step's ``1/s`` lives.

The ``smooth`` step (:mod:`.smooth`) multiplies a layer's weight input channel ``j`` by ``s_j`` and
its input by ``1/s_j``. The ``1/s`` is a buffer of the layer's input quantizer
(:data:`BUFFER`, shaped to broadcast over the layer's input: ``[I]`` for Linear, ``[I, 1, 1]`` for
Conv2d) and a forward pre-hook of that quantizer multiplies its input by it. So:

- the quantizer sees ``x / s`` whether it is enabled or not: the FP32 function (quantizers off) is
  the original one, and the layer's own input (what hooks on the layer record, what PTQ steps re-run
  the layer on) is still ``x``;
- the TorchScript ONNX export traces the hook: a constant ``Mul`` before the input ``QuantizeLinear``;
- the buffer is in the model's state dict (``model.pt``): :func:`restore` puts a placeholder on each
  quantizer that has one in a saved state dict, before the strict load fills in the values;
- a deep copy (the PTQ FP32 reference) keeps both (the hook reads the buffer from the module it is
  called on).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..quant import backend
from ..recipe.errors import RecipeError

BUFFER = "_smooth_inv_scale"


def _pre_scale(module: nn.Module, args: tuple) -> tuple | None:
    inverse = getattr(module, BUFFER, None)
    if inverse is None or not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    return (x * inverse.to(x.dtype), *args[1:])


def inverse_scale(quantizer: nn.Module) -> torch.Tensor | None:
    """The quantizer's ``1/s`` (shaped to broadcast over its input), or None when it has none."""
    return getattr(quantizer, BUFFER, None) if BUFFER in getattr(quantizer, "_buffers", {}) else None


def seen_by(quantizer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``quantizer`` quantizes when called on ``x`` (``x / s`` for a scaled one)."""
    inverse = inverse_scale(quantizer)
    return x if inverse is None else x * inverse.to(x.dtype)


def install(quantizer: nn.Module, inverse: torch.Tensor) -> None:
    """Give ``quantizer`` the input scale ``inverse`` (replacing an earlier one) and the hook that applies it."""
    inverse = inverse.detach().to(torch.float32)
    if BUFFER in quantizer._buffers:
        quantizer._buffers[BUFFER] = inverse
    else:
        quantizer.register_buffer(BUFFER, inverse, persistent=True)
    if _pre_scale not in quantizer._forward_pre_hooks.values():
        quantizer.register_forward_pre_hook(_pre_scale)


def uninstall(quantizer: nn.Module) -> None:
    """Remove the input scale and its hook (the quantizer sees its input as it is again)."""
    quantizer._buffers.pop(BUFFER, None)
    for key in [k for k, hook in quantizer._forward_pre_hooks.items() if hook is _pre_scale]:
        del quantizer._forward_pre_hooks[key]


def restore(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> list[str]:
    """Placeholders for the input scales a saved ``state_dict`` has (before loading it strictly);
    returns the quantizer paths. ``what`` names the file in errors."""
    modules = dict(model.named_modules())
    found = []
    for key, value in state_dict.items():
        if not key.endswith("." + BUFFER):
            continue
        path = key[: -len(BUFFER) - 1]
        module = modules.get(path)
        if module is None or not backend.is_quantizer(module):
            raise RecipeError(f"{what}: {key}: an input scale (ptq step smooth) for {path!r}, which is not a "
                              "quantizer of the rebuilt model",
                              hint="load the file into the model (and recipe lock) it was saved from")
        install(module, torch.ones_like(value))
        found.append(path)
    return found
