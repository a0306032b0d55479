"""PTQ algorithms run after calibration: a recipe's ``ptq:`` list, or ``recipe_engine.ptq.run`` from Python.

One module per algorithm, each registered by name with its settings model
(:func:`register`, ``settings.py``): ``bias_correction``, ``cle`` (cross-layer equalisation),
``adaround``, ``brecq`` (block reconstruction), ``range_search`` and ``smooth`` (SmoothQuant-style
scale migration into the weights). They reach the quantizers only
through :mod:`recipe_engine.quant.backend`, so they run on every backend. This package's own
import stays free of torch (the recipe schema imports :mod:`.settings`); :func:`run` imports the
steps when called.
"""

from __future__ import annotations

from typing import Any

from .registry import lookup, register, registered

__all__ = ["lookup", "register", "registered", "run"]


def run(model: Any, recipe_or_steps: Any, batches: Any = None, forward: Any = None, **kwargs: Any) -> list[dict]:
    """Run PTQ steps on a calibrated model (see :func:`recipe_engine.ptq.runner.run`)."""
    from .runner import run as run_steps

    return run_steps(model, recipe_or_steps, batches, forward, **kwargs)
