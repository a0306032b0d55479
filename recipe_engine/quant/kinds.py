"""Quantizable module kinds by name: which modules a rule's ``quantize:`` can quantize, and how.

A kind says whether a module is one of its own (``matches``), where the output channels of its
weight are (``channel_axis``, for ``per_channel: true``), whether it has a weight, and how it is
turned into a quantized module in place (``swap``) given the input and weight quantizers the
recipe's backend made. Every callable gets the backend's name. Built-ins register exactly as an
extension does:

- ``dense``: the layers the backend has a quantized class for (Conv*, ConvTranspose*, Linear,
  pooling); the backend swaps them;
- ``sparse``: spconv convolutions, quantized by the engine (:mod:`.sparse`).

An extension's swapped module keeps its quantizers in engine slots (mix in
:class:`~.slots.QuantizerSlots` and call ``set_quantizer``) so that share groups, the disable list
and exports find them. The most recently registered kind that matches a module wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..registry import Registry, resolve
from . import backend, sparse


@dataclass(frozen=True)
class ModuleKind:
    name: str
    matches: Any  # (module, backend) -> bool
    swap: Any  # (module, input_quantizer | None, weight_quantizer | None, backend) -> None
    channel_axis: Any = None  # (module, backend) -> int; default 0 ([O, ...] weights)
    has_weight: Any = None  # (module, backend) -> bool; default True

    def axis(self, module: nn.Module, backend_name: str) -> int:
        return 0 if self.channel_axis is None else resolve(self.channel_axis)(module, backend_name)

    def weighted(self, module: nn.Module, backend_name: str) -> bool:
        return True if self.has_weight is None else bool(resolve(self.has_weight)(module, backend_name))

    def install(self, module: nn.Module, input_q: Any, weight_q: Any, backend_name: str) -> None:
        resolve(self.swap)(module, input_q, weight_q, backend_name)


KINDS: Registry[ModuleKind] = Registry("quantizable module kind",
                                       "recipe_engine.quant.kinds.register(name, matches=..., swap=...)")


def register(name: str, *, matches: Callable | str, swap: Callable | str, channel_axis: Callable | str | None = None,
             has_weight: Callable | str | None = None) -> ModuleKind:
    """Register module kind ``name``; replaces an earlier one of that name."""
    return KINDS.add(name, ModuleKind(name, matches, swap, channel_axis, has_weight))


def unregister(name: str) -> None:
    KINDS.remove(name)


def registered() -> list[str]:
    return KINDS.names()


def kind_of(module: nn.Module, backend_name: str) -> ModuleKind | None:
    """The kind that quantizes ``module`` (the most recently registered that matches), else None."""
    for kind in reversed(KINDS.entries()):
        if resolve(kind.matches)(module, backend_name):
            return kind
    return None


# Built-ins, registered the same way as an extension's kinds.
register("dense", matches=lambda m, b: backend.dense_info(m, b) is not None,
         swap=lambda m, i, w, b: backend.swap_dense_module(m, i, w, backend=b),
         channel_axis=backend.weight_channel_axis, has_weight=backend.has_weight_slot)
register("sparse", matches=lambda m, b: sparse.is_sparse_conv(m),
         swap=lambda m, i, w, b: sparse.swap_sparse_module(m, i, w),
         channel_axis=lambda m, b: sparse.weight_channel_axis(m))
