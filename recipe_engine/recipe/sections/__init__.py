"""The sections of the recipe language (v1), one module per job; :mod:`..schema` assembles the recipe.

- :mod:`.quantize`: quantizer descriptors, selectors, rules, share groups;
- :mod:`.fuse`: ``fuse:`` entries; :mod:`.data`: model and data factories;
- :mod:`.calibration`: the ``calibration:`` section; :mod:`.training`: ``qat:`` and ``tune:``;
- export entries are owned by their formats (:mod:`recipe_engine.export.settings`).

Every section forbids unknown keys, so a misspelled key is an error with a "did you mean" hint
rather than a silently ignored setting. Titles and descriptions on every field end up in
``schemas/recipe.schema.json``. These modules stay light (no torch): ``recipe validate`` and
``recipe --help`` import them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
