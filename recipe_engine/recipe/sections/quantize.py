"""Quantizer descriptors, selectors, rules and share groups."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ..validators import check_patterns, check_types
from . import Section
from .calibration import CalibrationMethod


# --------------------------------------------------------------------------- quantizers
class QuantizerSpec(Section):
    """A quantizer descriptor: how one tensor (an input, a weight, an op input) is quantized."""

    num_bits: int = Field(8, ge=2, le=16, title="Bits", description="Integer bit width (8 for INT8).")
    per_channel: bool = Field(
        False,
        title="Per output channel",
        description="One amax per output channel. The engine picks the right axis for each module kind "
        "(0 for Conv/Linear/spconv weights [O,k..,I], 1 for ConvTranspose weights [I,O,k..]).",
    )
    axis: int | None = Field(
        None,
        title="Axis",
        description="Explicit quantization axis (overrides per_channel). Prefer per_channel: true.",
    )
    unsigned: bool = Field(False, title="Unsigned", description="Unsigned range (e.g. after ReLU).")
    narrow_range: bool = Field(
        False, title="Narrow range", description="Use [-127, 127] instead of [-128, 127] for signed 8 bit."
    )
    calibrator: Literal["max", "histogram"] = Field(
        "max",
        title="Calibrator",
        description="'max' records the absolute maximum; 'histogram' records a histogram from which "
        "calibration.method (entropy, mse, percentile) picks amax.",
    )
    method: CalibrationMethod | None = Field(
        None,
        title="Amax method override",
        description="Amax search for this quantizer only (histogram calibrators); default: calibration.method.",
    )
    learn_amax: bool = Field(False, title="Learn amax", description="Make amax a trainable parameter during QAT.")
    fake_quant: bool = Field(True, title="Fake quantization", description="Quantize-dequantize in float.")
    format: Literal["int", "fp8_e4m3"] = Field(
        "int", title="Format", description="int: integer of num_bits; fp8_e4m3: FP8 E4M3 (dense layers, backend: "
        "modelopt, per-tensor, max calibration; num_bits is ignored).",
    )
    amax: float | None = Field(
        None, gt=0, title="Fixed amax", description="Use this amax and skip calibration for this quantizer."
    )

    @model_validator(mode="after")
    def _learn_amax_is_per_tensor(self) -> QuantizerSpec:
        if self.learn_amax and (self.per_channel or self.axis is not None):
            raise ValueError("learn_amax needs a per-tensor quantizer: remove per_channel/axis")
        return self


QuantizerRef = Annotated[
    str | QuantizerSpec,
    Field(description="The name of an entry of `quantizers:` or an inline quantizer descriptor."),
]


# --------------------------------------------------------------------------- selection
class Selector(Section):
    """Selects modules by path pattern, type and parent. All given criteria must hold."""

    name: str | list[str] | None = Field(
        None,
        title="Name pattern(s)",
        description="Glob over named_modules() paths (e.g. 'encoder.conv*.0'), or 're:' + a regular "
        "expression matched in full. A list matches any of its patterns.",
    )
    type: str | list[str] | None = Field(
        None,
        title="Module type(s)",
        description="A class as 'package.module:Class' or a short name known to the engine "
        "(e.g. torch.nn.Conv2d, spconv.SubMConv3d, SparseConv). A list matches any.",
    )
    exact: bool = Field(False, title="Exact type", description="Do not match subclasses of `type`.")
    under: str | None = Field(
        None, title="Parent", description="Only modules strictly inside this module path (glob or re:)."
    )
    exclude: str | list[str] | None = Field(
        None, title="Exclude", description="Name pattern(s) removed from the selection."
    )
    optional: bool = Field(
        False, title="Optional", description="Selecting nothing is not an error (it is by default)."
    )

    _types = field_validator("type")(classmethod(lambda cls, v: check_types(v)))
    _patterns = field_validator("name", "under", "exclude")(classmethod(lambda cls, v: check_patterns(v)))

    @model_validator(mode="after")
    def _not_empty(self) -> Selector:
        if self.name is None and self.type is None and self.under is None:
            raise ValueError("a selector needs at least one of: name, type, under")
        return self


SelectorRef = Annotated[
    str | Selector, Field(description="A selector, or a plain string as shorthand for {name: STRING}.")
]


class QuantizeSpec(Section):
    """Which quantizers a selected module gets."""

    input: QuantizerRef | None = Field(None, title="Input quantizer", description="Quantizer of the input.")
    weight: QuantizerRef | None = Field(None, title="Weight quantizer", description="Quantizer of the weight.")


OpName = Literal["add", "cat"]


class Rule(Section):
    """Ordered rule: later rules override earlier ones for the same module."""

    select: SelectorRef = Field(title="Selector", description="Modules this rule applies to.")
    quantize: QuantizeSpec | Literal[False] | None = Field(
        None,
        title="Quantize",
        description="Input/weight quantizers for the selected modules; `false` removes quantization "
        "set by an earlier rule.",
    )
    ops: dict[OpName, QuantizerRef | Literal[False]] | None = Field(
        None,
        title="Op inputs",
        description="Quantize the inputs of `+`/torch.add (add) or torch.cat (cat) executed directly in the "
        "selected modules' forward, one quantizer per op site shared by all its inputs.",
    )

    @model_validator(mode="after")
    def _does_something(self) -> Rule:
        if self.quantize is None and self.ops is None:
            raise ValueError("a rule needs `quantize` and/or `ops`")
        return self



# --------------------------------------------------------------------------- sharing, disable
class ShareGroup(Section):
    """Quantizers that must carry one scale (TensorRT concat/add without reformat)."""

    quantizers: list[str] = Field(
        min_length=2,
        title="Quantizers",
        description="Quantizer names ('path.input', 'path.weight', op sites like 'layer1.0.add0'); "
        "globs and 're:' allowed.",
    )
    for_each: SelectorRef | None = Field(
        None,
        title="For each module",
        description="Make one group per selected module, with '{module}' in the quantizer names replaced by its "
        "path, e.g. for_each: {type: Bottleneck}, quantizers: ['{module}.conv1.input', '{module}.downsample.0.input'].",
    )
    optional: bool = Field(
        False, title="Optional", description="Missing quantizers are not an error (a group left with one is skipped)."
    )


ShareRef = Annotated[
    Annotated[list[str], Field(min_length=2)] | ShareGroup,
    Field(description="A list of two or more quantizer names, or {quantizers: [...], optional}."),
]

