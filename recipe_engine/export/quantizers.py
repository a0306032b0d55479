"""The quantizers that belong to an exported module, and the checks every export makes on them."""

from __future__ import annotations

import contextlib
import math

import torch

from ..quant import backend
from ..quant.apply import QuantState
from ..recipe.errors import RecipeError


def inside(path: str, module: str) -> bool:
    """True when module path ``path`` is ``module`` or below it ("" is the whole model)."""
    return not module or path == module or path.startswith(module + ".")


def quantizers_in(state: QuantState, module: str) -> list[tuple[list[str], backend.Quantizer]]:
    """Each distinct quantizer owned by ``module`` or its children, with all its names."""
    found = []
    for names, quantizer in state.unique():
        local = [n for n in names if inside(state.owners.get(n, ""), module)]
        if local:
            found.append((local, quantizer))
    return found


def amax_problem(quantizer: backend.Quantizer) -> str | None:
    """Why an enabled quantizer's amax cannot be exported, or None when it can."""
    amax = backend.get_amax(quantizer)
    if amax is None:
        return "has no amax (calibration never reached it)"
    amax = amax.float()
    if not bool(torch.isfinite(amax).all()):
        bad = int((~torch.isfinite(amax)).sum())
        return f"has a non-finite amax ({bad} of {amax.numel()} values NaN/inf: calibration saw no valid data)"
    if bool((amax <= 0).any()):
        bad = int((amax <= 0).sum())
        return f"has amax <= 0 ({bad} of {amax.numel()} values; an all-zero tensor or channel)"
    return None


def check_exportable(state: QuantState, module: str, what: str) -> None:
    """Fail loudly for enabled quantizers of ``module`` whose amax is missing, NaN/inf or zero."""
    problems = []
    for names, quantizer in quantizers_in(state, module):
        if not backend.is_enabled(quantizer):
            continue
        problem = amax_problem(quantizer)
        if problem:
            problems.append(f"{' = '.join(names)} {problem}")
    if problems:
        raise RecipeError(f"{what}: cannot export {len(problems)} quantizer(s): " + "; ".join(problems[:5])
                          + ("" if len(problems) <= 5 else f" (+{len(problems) - 5} more)"),
                          hint="calibrate on data that reaches these layers, give a fixed `amax:`, or `disable` them")


def scalar_amax(quantizer: backend.Quantizer) -> float:
    amax = backend.get_amax(quantizer)
    value = float(amax.float().reshape(-1)[0]) if amax is not None and amax.numel() == 1 else math.nan
    return value


def qdq_notes(state: QuantState, module: str, what: str) -> list[str]:
    """Refuse quantizers Q/DQ cannot express (not 8-bit); note those whose range ONNX widens."""
    notes = []
    for names, quantizer in quantizers_in(state, module):
        if not backend.is_enabled(quantizer):
            continue
        info = backend.describe(quantizer)
        if info["num_bits"] != 8:
            raise RecipeError(f"{what}: {' = '.join(names)} is a {info['num_bits']}-bit quantizer; ONNX "
                              "QuantizeLinear/DequantizeLinear (int8/uint8) express 8 bits only",
                              hint="use num_bits: 8 for exported layers, or disable this quantizer")
        if info.get("format", "int") == "int" and info["narrow_range"] and not info["unsigned"]:
            notes.append(f"{' = '.join(names)}: narrow_range [-127, 127] becomes int8's [-128, 127] in ONNX")
    return notes


def quantizers_off(state: QuantState) -> contextlib.AbstractContextManager[None]:
    """Switch every enabled quantizer off for the block (a faster FP32 forward), then back on."""
    return backend.switched_off(q for _, q in state.unique() if backend.is_enabled(q))
