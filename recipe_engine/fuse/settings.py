"""Options of the built-in fusion kinds (``pattern:`` chains and ``block:`` residual blocks), and their registration.

Light module (no torch): the recipe schema validates ``with:`` against these models when a recipe
is loaded; the folding itself is in :mod:`recipe_engine.fuse` (named by module path).
"""

from __future__ import annotations

from pydantic import Field

from ..recipe.sections import Section
from .registry import register


class FusionOptions(Section):
    """Base of a fusion kind's options model (``with:``; unknown keys are errors)."""


class PatternOptions(FusionOptions):
    fuse_relu: bool = Field(True, title="Fold a trailing ReLU into a sparse conv's act_type")
    allow_training: bool = Field(False, title="Fold BatchNorms in training mode (their running statistics)")


class BlockOptions(FusionOptions):
    fuse_relu: bool = Field(False, title="Fold the ReLU after conv1 of a sparse block into its act_type")
    allow_training: bool = Field(False, title="Fold BatchNorms in training mode (their running statistics)")


register("pattern", "recipe_engine.fuse.apply:fuse_pattern_entry", options=PatternOptions)
register("block", "recipe_engine.fuse.apply:fuse_block_entry", options=BlockOptions)
