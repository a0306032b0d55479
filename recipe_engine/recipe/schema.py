"""The recipe (v1): the top-level model, assembled from the sections and the registries.

The sections live in :mod:`.sections` (one module per job). The parts that extensions add to are
assembled from registries keyed by name (:mod:`recipe_engine.registry`):

- ``export:`` is the discriminated union (on ``format``) of every registered export format's
  settings model (:mod:`recipe_engine.export.formats`; the built-ins' in
  :mod:`recipe_engine.export.settings`);
- ``calibration.method`` and a quantizer's ``method`` accept the registered amax methods, and
  ``calibration:`` has their settings' keys (:mod:`.sections.calibration`);
- ``ptq:`` is the discriminated union (on ``step``) of every registered PTQ step's settings model
  (:mod:`recipe_engine.ptq.registry`; the built-ins' in :mod:`recipe_engine.ptq.settings`).

When a registry changes, :func:`rebuild` rebuilds the models in place (the classes stay the same
objects), so a format or method registered from Python is accepted by the next recipe loaded and
appears in ``recipe schema``. The names below are re-exported so that
``from recipe_engine.recipe.schema import QuantizerSpec`` keeps working.

This module must stay light: it is imported by ``recipe validate`` and
``recipe --help``, which never import torch.
"""

from __future__ import annotations

import difflib
from pathlib import PurePosixPath
from typing import Annotated, Any, Union

from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from ..calib import methods
from ..export import formats
from ..export.settings import ExportBase, OnnxQdqExport, OnnxSparseExport, TensorRTExport
from ..ptq import registry as ptq_steps
from .imports import Import, recipe_imports
from .paths import path_conflicts
from .sections import Section, calibration
from .sections.calibration import CalibrationMethod, CalibrationSection
from .sections.data import DataSection, FactoryRef, ModelSection
from .sections.fuse import FuseEntry
from .sections.quantize import (
    OpName,
    QuantizerRef,
    QuantizerSpec,
    QuantizeSpec,
    Rule,
    Selector,
    SelectorRef,
    ShareGroup,
    ShareRef,
)
from .sections.training import OptimizerSpec, QatSection, ScheduleSpec, TuneSection
from .validators import SEMVER

__all__ = [
    "CalibrationMethod", "CalibrationSection", "DataSection", "ExportBase", "ExportEntry", "FactoryRef", "FuseEntry",
    "ModelSection", "OnnxQdqExport", "OnnxSparseExport", "OpName", "OptimizerSpec", "QatSection", "QuantizeSpec",
    "QuantizerRef", "QuantizerSpec", "Recipe", "Rule", "ScheduleSpec", "Section", "Selector", "SelectorRef",
    "ShareGroup", "ShareRef", "TensorRTExport", "TuneSection",
]



def export_entry() -> Any:
    """The type of one ``export:`` entry: the registered formats' settings models, told apart by ``format``."""
    models = tuple(f.settings for f in formats.FORMATS.entries())
    if len(models) == 1:  # a discriminated union needs two members; one model checks its own format literal
        return models[0]
    return Annotated[Union[models], Field(discriminator="format")]  # noqa: UP007 (a runtime tuple of models)


ExportEntry = export_entry()


def ptq_step() -> Any:
    """The type of one ``ptq:`` entry: the registered steps' settings models, told apart by ``step``."""
    models = tuple(s.settings for s in ptq_steps.STEPS.entries())
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="step")]  # noqa: UP007 (a runtime tuple of models)


PtqStep = ptq_step()


# --------------------------------------------------------------------------- the recipe
class Recipe(Section):
    """A recipe-engine recipe (schema v1)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, title="recipe-engine recipe")

    recipe: str = Field(
        title="Name", description="Recipe name used in the catalogue and the lock.", pattern=r"^[A-Za-z0-9_.\-/]+$"
    )
    version: str = Field(title="Version", description="Semantic version, bumped when behaviour changes.")
    description: str = Field("", title="Description")
    backend: str = Field(
        "pytorch-quantization",
        title="Backend",
        description="Quantization library that makes the quantizers: pytorch-quantization (default) or modelopt "
        "(NVIDIA Model-Optimizer, needed for format: fp8_e4m3); others register with recipe_engine.backends.register.",
    )
    extends: str | list[str] | None = Field(
        None,
        title="Extends",
        description="Parent recipe(s) (relative path or catalogue name), deep-merged under this one.",
    )
    vars: dict[str, Any] = Field(
        default_factory=dict, title="Template variables", description="Values for {{ name }} in this file."
    )
    model: ModelSection | None = Field(None, title="Model")
    data: DataSection | None = Field(None, title="Data")
    quantizers: dict[str, QuantizerSpec] = Field(
        default_factory=dict, title="Quantizer descriptors", description="Named descriptors used by rules."
    )
    fuse: list[FuseEntry] = Field(default_factory=list, title="Fusions")
    rules: list[Rule] = Field(default_factory=list, title="Quantization rules")
    share: list[ShareRef] = Field(default_factory=list, title="Shared scales")
    disable: list[str] = Field(
        default_factory=list,
        title="Disabled",
        description="Quantizer names, op sites or module paths (glob or re:) that run in full precision.",
    )
    calibration: CalibrationSection = Field(default_factory=CalibrationSection, title="Calibration")
    qat: QatSection | None = Field(None, title="QAT")
    tune: TuneSection | None = Field(None, title="Tuning")
    export: list[ExportEntry] = Field(default_factory=list, title="Exports")
    ptq: list[PtqStep] = Field(
        default_factory=list, title="PTQ steps",
        description="Algorithms run in order after calibration (before evaluation, QAT and export): bias_correction, "
        "cle, adaround, brecq, range_search, or a registered step (recipe_engine.ptq.register).",
    )
    # where values read with secret() sit: recorded redacted (see recipe/secrets.py)
    _redactions: dict = PrivateAttr(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not SEMVER.fullmatch(value):
            raise ValueError(f"version must be semantic (MAJOR.MINOR.PATCH), got {value!r}")
        return value

    def reference_errors(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Cross-references pydantic cannot check field by field: (location, message) pairs."""
        errors: list[tuple[tuple[str | int, ...], str]] = []
        names = sorted(self.quantizers)
        from .. import backends

        if self.backend not in backends.registered():
            close = difflib.get_close_matches(self.backend, backends.registered(), n=1)
            errors.append((("backend",), f"unknown backend {self.backend!r}"
                           + (f"; did you mean {close[0]!r}?" if close else "")
                           + f" (registered: {', '.join(backends.registered())})"))

        def check(ref: Any, loc: tuple[str | int, ...]) -> None:
            if isinstance(ref, str) and ref not in self.quantizers:
                known = ", ".join(names) or "none defined"
                errors.append((loc, f"unknown quantizer {ref!r} (defined in `quantizers:`: {known})"))

        for i, rule in enumerate(self.rules):
            if isinstance(rule.quantize, QuantizeSpec):
                check(rule.quantize.input, ("rules", i, "quantize", "input"))
                check(rule.quantize.weight, ("rules", i, "quantize", "weight"))
            for op, ref in (rule.ops or {}).items():
                if ref is not False:
                    check(ref, ("rules", i, "ops", op))
        for i, message in path_conflicts([PurePosixPath(e.path) for e in self.export]):
            errors.append((("export", i, "path"), message))
        for i, entry in enumerate(self.export):  # each format checks its own references (tensorrt: source)
            errors += [(("export", i, *key), message) for key, message in entry.reference_errors(self.export[:i])]
        return errors

    def factories(self) -> list[str]:
        """Every module path this recipe makes the engine import (its trust surface), each once.

        Callables (factories, forward, evaluate, loss) are imported and called; class names from
        selectors, fusions and share groups are imported. See :mod:`.imports` for the details.
        """
        return list(dict.fromkeys(i.target for i in self.imports()))

    def imports(self) -> list[Import]:
        """Every import this recipe causes, with the key that causes it (see :mod:`.imports`)."""
        return recipe_imports(self)


def rebuild() -> None:
    """Re-assemble the registry-built parts and rebuild the models that hold them, in place."""
    global ExportEntry, PtqStep
    ExportEntry = export_entry()
    Recipe.__pydantic_fields__["export"].annotation = list[ExportEntry]
    PtqStep = ptq_step()
    Recipe.__pydantic_fields__["ptq"].annotation = list[PtqStep]
    calibration.assemble()
    for model in (QuantizerSpec, QuantizeSpec, Rule, Recipe):  # containers of CalibrationMethod / the section
        model.model_rebuild(force=True)


formats.FORMATS.subscribe(rebuild)
methods.METHODS.subscribe(rebuild)
ptq_steps.STEPS.subscribe(rebuild)
