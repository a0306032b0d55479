"""The recipe's ``data.evaluate`` on its selection split (``data.validation``) and its held-out split
(``data.test``).

``tune:`` and QAT ``keep_best`` choose on the validation data; the figures a run reports (``fp32``,
``int8``, ``qat`` in ``metrics.json``) are measured on ``data.test`` when the recipe has one, so that
the number reported is not the number that was selected on. Both are kept: ``metrics["validation"]``
and ``metrics["test"]`` map each phase to its metrics, and ``metrics["reported_split"]`` names the
split behind the top-level figures. Without ``data.test`` nothing changes: the figures are the
validation ones and neither block is written. Without ``data.validation`` either, the figures are
measured on the calibration batches, and ``reported_split`` says ``calibration``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from . import data as data_mod
from .recipe.loader import LoadedRecipe

SELECTION, HELD_OUT = "validation", "test"
CALIBRATION = "calibration"  # reported_split when the recipe has no data.validation


class SplitEvaluation:
    """``evaluate`` bound to the recipe's validation batches and, when set, its test batches."""

    def __init__(self, loaded: LoadedRecipe, evaluate: Callable[[nn.Module, Any], dict[str, float]]) -> None:
        self.evaluate = evaluate
        self.validation = data_mod.make_data(loaded, SELECTION)  # data.calibration when data.validation is unset
        self.on_calibration = loaded.spec.data is None or loaded.spec.data.validation is None
        has_test = loaded.spec.data is not None and loaded.spec.data.test is not None
        self.test = data_mod.make_data(loaded, HELD_OUT) if has_test else None

    @property
    def reported_split(self) -> str:
        """``test``, else ``validation``, else ``calibration`` (no data.validation: the calibration batches)."""
        if self.test is not None:
            return HELD_OUT
        return CALIBRATION if self.on_calibration else SELECTION

    def on_test(self, model: nn.Module, bar: Callable[[Any, str], Any] | None = None) -> dict[str, float] | None:
        """The metrics on ``data.test`` (None when the recipe has none); ``bar(batches, split)`` wraps them."""
        if self.test is None:
            return None
        return data_mod.run_evaluate(self.evaluate, model, bar(self.test, HELD_OUT) if bar else self.test)

    def record(self, metrics: dict[str, Any], phase: str, validation: dict[str, float],
               test: dict[str, float] | None) -> dict[str, float]:
        """Store one phase's figures: ``metrics[phase]`` is the reported one (test when given)."""
        metrics["reported_split"] = self.reported_split
        if test is None:
            metrics[phase] = validation
            return validation
        metrics.setdefault(SELECTION, {})[phase] = validation
        metrics.setdefault(HELD_OUT, {})[phase] = test
        metrics[phase] = test
        return test

    def measure(self, model: nn.Module, metrics: dict[str, Any], phase: str,
                bar: Callable[[Any, str], Any] | None = None) -> dict[str, float]:
        """Evaluate ``model`` on both splits and :meth:`record` the result under ``phase``.

        ``bar(batches, split)`` may wrap each split's batches (a progress bar).
        """
        batches = bar(self.validation, SELECTION) if bar else self.validation
        validation = data_mod.run_evaluate(self.evaluate, model, batches)
        return self.record(metrics, phase, validation, self.on_test(model, bar))
