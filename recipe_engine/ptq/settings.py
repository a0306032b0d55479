"""Settings of the built-in PTQ steps (a recipe's ``ptq:`` list), one pydantic model per step.

Each entry of ``ptq:`` names its algorithm with ``step:`` (the discriminator over the registered
steps, :mod:`.registry`) and carries that algorithm's settings; unknown keys are errors. This module is imported by the recipe schema, so
it stays free of torch (pydantic and the recipe's validators only).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..recipe.validators import check_patterns


class StepSettings(BaseModel):
    """What every PTQ step has: its name, a budget of calibration batches, a seed and a layer filter."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    batches: int = Field(4, ge=1, title="Batches", description="Calibration batches the step uses (its data budget).")
    seed: int = Field(0, title="Seed", description="Seed of every random choice the step makes (same seed, same result).")
    layers: str | list[str] | None = Field(
        None,
        title="Layers",
        description="Module path patterns (glob or 're:') of the quantized layers the step works on; default all.",
    )
    exclude: str | list[str] | None = Field(None, title="Exclude", description="Module path patterns left alone.")

    _patterns = field_validator("layers", "exclude")(classmethod(lambda cls, v: check_patterns(v)))


class BiasCorrectionStep(StepSettings):
    """Empirical bias correction: add each quantized layer's mean output error (per channel) to its bias."""

    step: Literal["bias_correction"] = Field(title="Step")


class CleStep(StepSettings):
    """Cross-layer equalisation of conv-ReLU-conv (and linear) chains, dense and sparse."""

    step: Literal["cle"] = Field(title="Step")
    iterations: int = Field(2, ge=1, le=100, title="Sweeps", description="Equalisation sweeps over all pairs.")
    max_scale: float = Field(
        100.0, gt=1, title="Largest scale", description="Per-channel scales are clamped to [1/max_scale, max_scale].")
    pairs: list[tuple[str, str]] | None = Field(
        None,
        title="Pairs",
        description="Explicit [first, second] module paths; default: every conv/linear whose output reaches "
        "the next one through a ReLU only (found on one batch and checked: FP32 output unchanged).",
    )
    tolerance: float = Field(
        1e-4, gt=0, title="FP32 tolerance",
        description="Largest relative change of the FP32 output a pair may cause; a pair above it is undone.")


class ReconstructionSettings(StepSettings):
    """Adaptive rounding settings shared by AdaRound and block reconstruction."""

    iterations: int = Field(200, ge=1, title="Iterations", description="Optimiser steps per layer (or block).")
    lr: float = Field(5e-2, gt=0, title="Learning rate", description="Adam learning rate of the rounding variables.")
    reg_weight: float = Field(1.0, ge=0, title="Regulariser weight", description="Weight of the rounding regulariser.")
    warmup: float = Field(
        0.2, ge=0, lt=1, title="Warm-up", description="Fraction of the iterations without the rounding regulariser.")
    beta: tuple[float, float] = Field(
        (20.0, 2.0), title="Annealing", description="Regulariser exponent, annealed from the first to the second value.")
    task_loss: float = Field(
        0.0, ge=0, title="Task loss weight",
        description="Weight of the task-guided term: error of the whole model's output against the FP32 model's "
        "output (each iteration then runs the whole model); 0 turns it off.")

    @model_validator(mode="after")
    def _annealing(self) -> ReconstructionSettings:
        if not self.beta[0] >= self.beta[1] > 0:
            raise ValueError("beta must be [start, end] with start >= end > 0 (e.g. [20, 2])")
        return self


class AdaRoundStep(ReconstructionSettings):
    """AdaRound: learn each weight's rounding (up or down) layer by layer to reconstruct the layer's output."""

    step: Literal["adaround"] = Field(title="Step")


class BrecqStep(ReconstructionSettings):
    """BRECQ-style reconstruction: learn the rounding of all layers of a block together against its output."""

    step: Literal["brecq"] = Field(title="Step")
    blocks: str | list[str] | None = Field(
        None,
        title="Blocks",
        description="Module path patterns of the blocks; default: the modules of the recipe's `fuse[].block` types. "
        "Quantized layers outside every block are reconstructed one by one.",
    )

    _blocks = field_validator("blocks")(classmethod(lambda cls, v: check_patterns(v)))


class RangeSearchStep(StepSettings):
    """Activation ranges by grid search over scaled maxima, minimising the error of the layer's output."""

    step: Literal["range_search"] = Field(title="Step")
    grid: int = Field(40, ge=2, le=1000, title="Candidates", description="Number of candidate amax values.")
    min_ratio: float = Field(
        0.2, gt=0, lt=1, title="Smallest ratio", description="Candidates run from min_ratio * max to max.")


class SmoothStep(StepSettings):
    """SmoothQuant-style scale migration: per input channel, part of the activation's range moves into the weight."""

    step: Literal["smooth"] = Field(title="Step")
    alpha: float | list[float] = Field(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        title="Migration strength",
        description="s_j = amax_x[j]^alpha / amax_w[j]^(1 - alpha) for input channel j; one value, or candidates "
        "from which each layer takes the one with the lowest error of its INT8 output on the calibration batches "
        "(a layer no candidate improves is left as it was).")
    max_scale: float = Field(
        1e4, gt=1, title="Largest scale", description="Per-channel scales are clamped to [1/max_scale, max_scale].")

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float | list[float]) -> float | list[float]:
        values = [value] if isinstance(value, (int, float)) else value
        if not values:
            raise ValueError("give at least one alpha (e.g. 0.5, or [0.25, 0.5, 0.75])")
        for item in values:
            if not 0.0 <= item <= 1.0:
                raise ValueError(f"alpha {item} is outside [0, 1] (0 gives each weight input channel the range 1, "
                                 "1 each input channel)")
        return value

    def candidates(self) -> list[float]:
        return [float(self.alpha)] if isinstance(self.alpha, (int, float)) else [float(a) for a in self.alpha]
