"""Settings models of the built-in amax methods: their keys in a recipe's ``calibration:`` section.

A method's settings model lists the keys it reads (flat in ``calibration:``, next to ``method``):
``calibration: {method: percentile, percentile: 99.9}``. The section is assembled from every
registered method's model (:mod:`recipe_engine.recipe.sections.calibration`); the function gets
the whole section as ``settings``. Light module (no torch): the recipe schema is built from it.
"""

from __future__ import annotations

from pydantic import Field

from ..recipe.sections import Section


class MethodSettings(Section):
    """Base of an amax method's settings model (unknown keys are errors, as in every section)."""


class SearchSettings(MethodSettings):
    """The candidate grid of the entropy and mse searches."""

    start_bin: int = Field(128, ge=1, title="Start bin", description="First candidate bin for entropy/mse.")
    stride: int = Field(1, ge=1, title="Stride", description="Candidate bin stride for entropy/mse.")


class PercentileSettings(MethodSettings):
    percentile: float = Field(99.99, gt=0, le=100, title="Percentile", description="For method: percentile.")
