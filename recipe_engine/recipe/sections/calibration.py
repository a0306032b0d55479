"""The ``calibration:`` section, assembled from the amax-method registry.

``method`` (here and in a quantizer descriptor) accepts the names registered in
:mod:`recipe_engine.calib.methods`, and the section's keys are its own (``method``, ``batches``,
``num_bins``, ``skip_zeros``: how statistics are collected) plus the fields of every registered
method's settings model (``percentile``; ``start_bin``, ``stride`` of entropy/mse). :func:`assemble`
puts those fields on :class:`CalibrationSection` and runs on every registration;
:mod:`..schema` then rebuilds the models that contain the section.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from ...calib import methods
from . import Section


def _known_method(name: str) -> str:
    if name not in methods.METHODS:
        raise ValueError(methods.METHODS.unknown(name))
    return name


class _MethodNames:
    """JSON schema of a method name: an enum of the methods registered when the schema is generated."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict:
        schema = handler(core_schema)
        schema["enum"] = methods.registered()
        return schema


CalibrationMethod = Annotated[str, AfterValidator(_known_method), _MethodNames()]


class CalibrationSection(Section):
    """How amax values are computed."""

    method: CalibrationMethod = Field(
        "max",
        title="Method",
        description="Amax search for histogram calibrators: entropy, mse or percentile ('max' uses the "
        "histogram's maximum), or a method registered with recipe_engine.calib.methods.register. Max "
        "calibrators always use the absolute maximum.",
    )
    batches: int | None = Field(None, ge=1, title="Batches", description="Calibrate on at most this many batches.")
    num_bins: int = Field(2048, ge=16, title="Histogram bins")
    skip_zeros: bool = Field(False, title="Skip zeros", description="Ignore exact zeros in histograms.")


OWN_FIELDS = frozenset(CalibrationSection.model_fields)


def method_fields() -> dict[str, Any]:
    """Field name -> FieldInfo over every registered method's settings model; a clash is a TypeError."""
    fields: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for method in methods.METHODS.entries():
        for name, info in (method.settings.model_fields if method.settings else {}).items():
            if name in OWN_FIELDS:
                raise TypeError(f"calibration method {method.name!r}: setting {name!r} is a key of calibration: itself")
            if name in fields and (fields[name].annotation, fields[name].default) != (info.annotation, info.default):
                raise TypeError(f"calibration methods {owners[name]!r} and {method.name!r} both define setting "
                                f"{name!r}, differently")
            fields.setdefault(name, info)
            owners.setdefault(name, method.name)
    return fields


def assemble() -> None:
    """Put every registered method's settings on :class:`CalibrationSection` (in place) and rebuild it."""
    current = CalibrationSection.__pydantic_fields__
    for name in [n for n in current if n not in OWN_FIELDS]:
        del current[name]
    for name, info in method_fields().items():
        current[name] = copy.copy(info)
    CalibrationSection.model_rebuild(force=True)


assemble()
