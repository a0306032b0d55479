"""The hand-written NVIDIA-style pytorch-quantization pipelines, and the optional per-model peer modules.

CenterPoint: :mod:`.handwritten_centerpoint` (fold, swap, calibrate, load amax; MSE), calibrated on the
seed's calibration batches. PointPillars: ``accuracy_parts/handwritten_pointpillars.py`` and
``accuracy_parts/modelopt_pointpillars.py`` when they exist (written separately; each has
``run(seed, ..., calib_batches=N) -> {"test", "val", "seconds", "quantizers"}``); without them the rows
say "not present".
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch

from . import engine_rows, peers
from .common import Measure, Timer, quiet
from .models import ModelSpec, Settings


def optional(name: str) -> Any | None:
    """``accuracy_parts.<name>`` when the file exists, else None."""
    if importlib.util.find_spec(f"{__package__}.{name}") is None:
        return None
    return importlib.import_module(f"{__package__}.{name}")


def centerpoint(spec: ModelSpec, settings: Settings, seed: int) -> Measure:
    """handwritten_centerpoint.build_quantized on the seed's calibration batches (MSE amax)."""
    from . import handwritten_centerpoint as hand

    _, batches, _ = peers.calibration(spec, settings, seed)
    torch.manual_seed(0)
    timer = Timer()
    with quiet(), timer:
        model = hand.build_quantized(batches, len(batches), "mse")
    enabled = sum(1 for q in hand.quantizers(model) if not q._disabled)
    return engine_rows.eval_data(spec, settings).measure(model, timer.seconds, f"{enabled} quantizers")


def module_row(name: str, settings: Settings, seed: int, **kwargs: Any) -> Measure:
    """``accuracy_parts.<name>.run(seed, calib_batches=..., **kwargs)`` as a measure."""
    module = optional(name)
    batches = settings.calib_batches or 8
    with quiet():
        got = module.run(seed, calib_batches=batches, **kwargs)
    note = f"{got.get('quantizers', '-')} quantizers, {batches} calibration batches"
    if settings.quick:
        note += ", the module's own evaluation splits"
    return Measure(got["test"], got.get("val"), got["seconds"], note)
