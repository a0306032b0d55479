"""Quantizer slots the engine holds on a module it quantizes itself (spconv convs, extensions' module kinds).

A module class that mixes in :class:`QuantizerSlots` keeps its input and weight quantizers in
``self._input_quantizer`` / ``self._weight_quantizer``; the engine reads and replaces them through
:func:`recipe_engine.quant.backend.module_quantizer` / ``set_module_quantizer`` (share groups,
export, analysis), whichever backend made the quantizers.
"""

from __future__ import annotations

from typing import Any


class QuantizerSlots:
    # set by the kind's swap (set_quantizer); no class default: nn.Module keeps module values in _modules,
    # and a class attribute would shadow them
    _input_quantizer: Any
    _weight_quantizer: Any

    @property
    def input_quantizer(self) -> Any:
        return self._input_quantizer

    @property
    def weight_quantizer(self) -> Any:
        return self._weight_quantizer

    def set_quantizer(self, role: str, quantizer: Any) -> None:
        if role not in ("input", "weight"):
            raise ValueError(f"a quantized module has input and weight quantizers, not {role!r}")
        setattr(self, f"_{role}_quantizer", quantizer)
