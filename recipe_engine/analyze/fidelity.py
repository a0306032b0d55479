"""Per-quantizer signal-to-quantization-noise ratios (SQNR) measured on real data."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..quant import backend
from ..quant.apply import get_state


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """10 log10(signal power / noise power); inf when identical, -inf for a zero signal."""
    reference = reference.detach().double()
    noise = (reference - approximation.detach().double()).square().sum().item()
    signal = reference.square().sum().item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class QuantizerFidelity:
    name: str
    kind: str  # input | weight | op
    enabled: bool
    sqnr_db: float
    amax: float


def measure_fidelity(model: nn.Module, batch: Any, forward: Callable) -> list[QuantizerFidelity]:
    """SQNR of every quantizer's output vs its input on one batch (activations) or on the weight."""
    state = get_state(model)
    records: dict[int, float] = {}
    handles = []

    def record(module: nn.Module, inputs: tuple, output: Any) -> None:
        # measured now: an in-place op after the quantizer (`out += identity`) overwrites its input's storage
        if id(module) not in records and isinstance(inputs[0], torch.Tensor):
            records[id(module)] = sqnr_db(inputs[0], output)

    for _, quantizer in state.unique():
        handles.append(quantizer.register_forward_hook(record))
    disabled = [q for _, q in state.unique() if not backend.is_enabled(q)]
    for quantizer in disabled:  # measure what each quantizer *would* do, then restore
        backend.set_enabled(quantizer, True)
    try:
        with torch.no_grad():
            forward(model, batch)
    finally:
        for quantizer in disabled:
            backend.set_enabled(quantizer, False)
        for handle in handles:
            handle.remove()
    results = []
    for names, quantizer in state.unique():
        suffix = names[0].rsplit(".", 1)[-1]
        kind = suffix if suffix in ("input", "weight") else "op"
        amax = backend.get_amax(quantizer)
        value = records.get(id(quantizer), math.nan)
        results.append(QuantizerFidelity(" = ".join(names), kind, backend.is_enabled(quantizer), value,
                                         float(amax.max()) if amax is not None else math.nan))
    return results
