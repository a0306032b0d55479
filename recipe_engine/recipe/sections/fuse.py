"""``fuse:`` entries: BatchNorm/activation folding declarations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..validators import check_types
from . import Section
from .quantize import SelectorRef


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
        None, title="Registered pattern", description="Name of a pattern registered from Python."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        alias="with",
        title="Options",
        description="Pattern options, e.g. {fuse_relu: false}.",
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

    @model_validator(mode="after")
    def _one_kind(self) -> FuseEntry:
        kinds = [k for k in ("pattern", "block", "use") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a fuse entry needs exactly one of: pattern, block, use")
        if self.pattern is not None and len(self.pattern) < 2:
            raise ValueError("a fuse pattern needs at least two module types, e.g. [Conv2d, BatchNorm2d]")
        return self

