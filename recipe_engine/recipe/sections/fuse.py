"""``fuse:`` entries: BatchNorm/activation folding declarations.

An entry names a fusion kind (:mod:`recipe_engine.fuse.registry`): ``pattern:`` and ``block:`` are the
built-in kinds, ``use: NAME`` any registered one. ``with:`` is checked against the options model of the
kind when that kind is registered at load time (a ``use:`` kind registered later is checked when it runs).
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ...fuse import settings as _builtin_kinds  # noqa: F401  (registers pattern and block)
from ...fuse.registry import FUSIONS
from ..validators import check_types
from . import Section
from .quantize import SelectorRef


class _OptionsByKind:
    """JSON schema of ``with:``: names every registered kind's options when the schema is generated."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict:
        schema = handler(core_schema)
        listed = [f"{kind.name}: {', '.join(kind.options.model_fields)}" for kind in FUSIONS.entries()
                  if kind.options is not None and kind.options.model_fields]
        schema["description"] = "Options of the entry's fusion kind, e.g. {fuse_relu: false}. " + "; ".join(listed)
        return schema


def _option_problems(kind_name: str, options_model: type, value: dict) -> list[str]:
    try:
        options_model.model_validate(value)
    except ValidationError as exc:
        problems = []
        allowed = list(options_model.model_fields)
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, allowed, n=1)
                problems.append(f"unknown option {key!r} of fusion kind {kind_name!r}"
                                + (f"; did you mean {close[0]!r}?" if close else "")
                                + f" (its options: {', '.join(allowed) or 'none'})")
            else:
                problems.append(f"option {key!r}: {error['msg']}")
        return problems
    return []


class FuseEntry(Section):
    """A BatchNorm/activation folding declaration."""

    pattern: list[str] | None = Field(
        None,
        title="Chain pattern",
        description="Consecutive module types inside nn.Sequential/SparseSequential, e.g. "
        "[Conv2d, BatchNorm2d, ReLU]; 'A|B' accepts either type.",
    )
    block: str | None = Field(
        None,
        title="Block type",
        description="A residual block class ('module:Class'); its conv->bn pairs are given by `roles`.",
    )
    roles: dict[str, str] | None = Field(
        None,
        title="Roles",
        description="conv attribute -> bn attribute inside the block, e.g. {conv1: bn1, conv2: bn2}. "
        "Default: convN -> bnN for every N present.",
    )
    use: str | None = Field(
        None, title="Fusion kind", description="Name of a fusion kind registered with recipe_engine.fuse.register."
    )
    options: Annotated[dict[str, Any], _OptionsByKind()] = Field(
        default_factory=dict,
        alias="with",
        title="Options",  # description: written by _OptionsByKind from the registered kinds
    )
    within: SelectorRef | None = Field(
        None, title="Scope", description="Only fuse modules matched by this selector (or below them)."
    )
    phase: Literal["before_calibration", "before_export"] = Field(
        "before_calibration",
        title="Phase",
        description="When to fold: before calibration (default) or only before export.",
    )
    optional: bool = Field(False, title="Optional", description="Matching nothing is not an error.")

    @field_validator("pattern")
    @classmethod
    def _pattern_types(cls, value: list[str] | None) -> list[str] | None:
        for element in value or []:
            check_types([part.strip() for part in element.split("|")])
        return value

    _block = field_validator("block")(classmethod(lambda cls, v: check_types(v)))

    @field_validator("options")
    @classmethod
    def _options_of_kind(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        data = info.data
        name = "pattern" if data.get("pattern") is not None else "block" if data.get("block") is not None \
            else data.get("use")
        kind = FUSIONS.lookup(name) if isinstance(name, str) else None
        if kind is not None and kind.options is not None:
            problems = _option_problems(name, kind.options, value)
            if problems:
                raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> FuseEntry:
        kinds = [k for k in ("pattern", "block", "use") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a fuse entry needs exactly one of: pattern, block, use")
        if self.pattern is not None and len(self.pattern) < 2:
            raise ValueError("a fuse pattern needs at least two module types, e.g. [Conv2d, BatchNorm2d]")
        return self

