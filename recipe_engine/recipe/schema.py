"""Pydantic models of the recipe language (v1).

Every section forbids unknown keys, so a misspelled key is an error with a
"did you mean" hint rather than a silently ignored setting. Titles and
descriptions on every field end up in ``schemas/recipe.schema.json`` so that
editors can show help while a recipe is written.

This module must stay light: it is imported by ``recipe validate`` and
``recipe --help``, which never import torch.
"""

from __future__ import annotations

import difflib
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .imports import Import, recipe_imports
from .paths import path_conflicts, safe_relative_path
from .validators import SEMVER, check_artifact, check_callable, check_patterns, check_types

CalibrationMethod = Literal["max", "entropy", "mse", "percentile"]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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


# --------------------------------------------------------------------------- fusion
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


# --------------------------------------------------------------------------- model and data
class FactoryRef(Section):
    """A callable named 'package.module:callable' and its keyword arguments."""

    factory: str = Field(title="Factory", description="'package.module:callable' returning the object.")
    kwargs: dict[str, Any] = Field(default_factory=dict, title="Keyword arguments")

    _check = field_validator("factory")(classmethod(lambda cls, v: check_callable(v)))


class ModelSection(FactoryRef):
    """How to build the FP32 model."""

    checkpoint: str | None = Field(
        None,
        title="Checkpoint",
        description="State dict file, loaded with torch.load(weights_only=True); relative to the recipe.",
    )
    checkpoint_key: str | None = Field(
        None, title="Checkpoint key", description="Key of the state dict inside the checkpoint (e.g. 'model')."
    )
    strict: bool = Field(True, title="Strict loading", description="load_state_dict(strict=...).")


class DataSection(Section):
    """Data factories and the adapters that connect batches to the model."""

    calibration: FactoryRef = Field(title="Calibration data", description="Iterable of calibration batches.")
    validation: FactoryRef | None = Field(
        None, title="Validation data", description="Batches for `evaluate` (default: calibration data)."
    )
    train: FactoryRef | None = Field(None, title="Training data", description="Batches for QAT.")
    forward: str | None = Field(
        None,
        title="Forward adapter",
        description="'module:callable' (model, batch) -> output; default model(**batch) for dicts, "
        "model(*batch) for tuples/lists, model(batch) otherwise.",
    )
    evaluate: str | None = Field(
        None,
        title="Evaluate",
        description="'module:callable' (model, batches) -> {metric: value}, used in reports and tuning.",
    )
    loss: str | None = Field(
        None, title="Loss", description="'module:callable' (output, batch) -> scalar loss, used by QAT."
    )

    _check = field_validator("forward", "evaluate", "loss")(classmethod(lambda cls, v: check_callable(v)))


# --------------------------------------------------------------------------- calibration
class CalibrationSection(Section):
    """How amax values are computed."""

    method: CalibrationMethod = Field(
        "max",
        title="Method",
        description="Amax search for histogram calibrators: entropy, mse or percentile ('max' uses the "
        "histogram's maximum). Max calibrators always use the absolute maximum.",
    )
    batches: int | None = Field(None, ge=1, title="Batches", description="Calibrate on at most this many batches.")
    percentile: float = Field(99.99, gt=0, le=100, title="Percentile", description="For method: percentile.")
    num_bins: int = Field(2048, ge=16, title="Histogram bins")
    skip_zeros: bool = Field(False, title="Skip zeros", description="Ignore exact zeros in histograms.")
    start_bin: int = Field(128, ge=1, title="Start bin", description="First candidate bin for entropy/mse.")
    stride: int = Field(1, ge=1, title="Stride", description="Candidate bin stride for entropy/mse.")


# --------------------------------------------------------------------------- QAT
class OptimizerSpec(Section):
    """A torch.optim optimizer by class name, with parameter groups."""

    name: str = Field("SGD", title="Optimizer", description="A torch.optim class name, e.g. AdamW, SGD.")
    kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"lr": 1e-4},
        title="Keyword arguments",
        description="Passed to the optimizer class, e.g. {lr: 1e-4, weight_decay: 0.01}.",
    )
    no_decay_on_norm_and_bias: bool = Field(
        True,
        title="No weight decay on BN/bias parameters",
        description="Put normalization-layer parameters and biases in a group with weight_decay 0.",
    )
    amax_lr_mult: float = Field(
        1.0,
        gt=0,
        title="amax learning-rate multiplier (learn_amax)",
        description="Learned amax parameters (quantizers with learn_amax) get lr x this, and no weight decay.",
    )


class ScheduleSpec(Section):
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["constant", "one_cycle", "cosine", "multistep"] = Field(
        "constant",
        title="Schedule",
        description="constant; one_cycle (torch OneCycleLR, cosine annealing, momentum cycling); cosine (linear "
        "warm-up then cosine decay to 0); multistep (lr x gamma at each milestone step).",
    )
    warmup_steps: int = Field(0, ge=0, title="Warm-up steps (cosine)", description="Linear warm-up length.")
    milestones: list[int] = Field(
        default_factory=list, title="Milestones (multistep)", description="Steps at which lr is multiplied by gamma."
    )
    gamma: float = Field(0.1, gt=0, title="Decay factor (multistep)", description="Multiplier at each milestone.")
    max_lr: float | None = Field(
        None, gt=0, title="Peak lr (one_cycle)", description="Default: the optimizer's lr."
    )
    pct_start: float = Field(
        0.4, gt=0, lt=1, title="Warm-up fraction (one_cycle)", description="Fraction of steps spent increasing lr."
    )
    div_factor: float = Field(
        10.0, gt=0, title="Initial lr = max_lr / div_factor (one_cycle)", description="Start of the cycle."
    )
    final_div_factor: float = Field(
        1e4, gt=0, title="Final lr = initial / final_div_factor (one_cycle)", description="End of the cycle."
    )


class QatSection(Section):
    """Quantization-aware fine-tuning of the calibrated model (fake quantization, amax fixed unless learned)."""

    steps: int | None = Field(None, ge=1, title="Steps", description="Optimizer steps (per rank).")
    epochs: int | None = Field(
        None, ge=1, title="Epochs", description="Passes over data.train (each rank over its shard)."
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, title="Optimizer")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, title="LR schedule")
    grad_clip: float | None = Field(
        None, gt=0, title="Gradient clipping (max norm)", description="Clip the global gradient norm."
    )
    amp: bool = Field(
        False, title="Mixed precision", description="torch.autocast + GradScaler on CUDA; always off on CPU."
    )
    freeze_bn_after: int | None = Field(
        None,
        ge=0,
        title="Freeze BN statistics after N steps",
        description="From this step on, BatchNorm layers (those not folded) stop updating running statistics.",
    )
    loss_weights: dict[str, float] = Field(
        default_factory=dict,
        title="Weights of a dict of losses",
        description="When the loss is a dict, its entries are summed with these weights (default 1).",
    )
    eval_every: int | None = Field(
        None, ge=1, title="Evaluate every N steps", description="Run data.evaluate on the validation data."
    )
    keep_best: str | None = Field(
        None,
        title="Keep the best checkpoint by this metric",
        description="Key of the evaluate() result; the saved model is the best one seen (evaluations + end).",
    )
    higher_is_better: bool = Field(True, title="Higher is better", description="Direction of keep_best.")
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        title="Checkpoint every N steps",
        description="Resumable checkpoint (qat_checkpoint.pt in the run directory); one is always written at the end.",
    )
    log_every: int = Field(10, ge=1, title="Log every N steps", description="Loss lines in qat_log.jsonl.")
    seed: int = Field(0, title="Seed", description="Seeds torch, numpy and random (plus the rank).")

    @model_validator(mode="after")
    def _length(self) -> QatSection:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("qat needs exactly one of: steps, epochs")
        return self


# --------------------------------------------------------------------------- export
MARGIN_DB = Field(
    0.5,
    ge=0,
    title="SQNR margin (dB)",
    description="The export fails when the runtime's output SQNR vs FP32 is more than this below PyTorch "
    "fake-quant's on the same inputs, or when its difference from PyTorch has a systematic part (offset/gain per "
    "channel) above -10 dB of the quantization noise.",
)
CALL_INPUTS = Field(
    None,
    title="Inputs",
    description="File input name -> path of a tensor in the module's call: a forward parameter, then dict keys or "
    "list positions (`batch_dict.voxel_features`). For modules that take dicts; goes with `outputs`.",
)
CALL_OUTPUTS = Field(
    None,
    title="Outputs",
    description="Paths of the output tensors in the module's return value (`spatial_features`: key of a returned "
    "dict; `0`: first item of a tuple); each is also the output's name.",
)
REMOVED_KEYS = {
    "tolerance": "verification compares SQNR vs FP32 with PyTorch fake-quant's; use `margin_db` (default 0.5)",
    "max_fraction": "verification compares SQNR vs FP32 with PyTorch fake-quant's; use `margin_db` (default 0.5)",
}


class ExportBase(Section):
    module: str | None = Field(
        None, title="Module", description="Sub-module path to export (default: the whole model)."
    )
    path: str = Field(
        title="Path",
        description="Output file name inside the run directory: relative, no '..' or hidden components, not one "
        "of the files the run writes itself (recipe.lock.yaml, model.pt, metrics.json, report.md, ...).",
    )

    _path = field_validator("path")(classmethod(lambda cls, v: check_artifact(v)))

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in REMOVED_KEYS.items():
                if key in data:
                    raise ValueError(f"`{key}` was removed: {why}")
        return data


class OnnxQdqExport(ExportBase):
    """Dense parts: ONNX with QuantizeLinear/DequantizeLinear pairs."""

    format: Literal["onnx-qdq"] = Field(title="Format")
    target: Literal["tensorrt", "onnxruntime"] = Field(
        "tensorrt", title="Deployment target",
        description="tensorrt: Q/DQ on layer inputs and weights (TensorRT's placement). onnxruntime: placed for "
        "onnxruntime's CPU provider (uint8 activations, int8 weights, int32 biases, one Q per tensor) so that its "
        "optimiser builds QLinearConv/QLinearAdd/QLinearConcat kernels; verified against FP32.")
    opset: int = Field(17, ge=13, title="ONNX opset")
    fp16: bool = Field(False, title="FP16 graph")
    dynamic_axes: dict[str, dict[int, str]] | None = Field(None, title="Dynamic axes per input name")
    inputs: dict[str, str] | None = CALL_INPUTS
    outputs: list[str] | None = CALL_OUTPUTS
    margin_db: float = MARGIN_DB


class OnnxSparseExport(ExportBase):
    """spconv parts: the libspconv sparse ONNX format."""

    format: Literal["onnx-sparse"] = Field(title="Format")
    layout: Literal["xyz", "zyx"] = Field("zyx", title="Index layout of the runtime voxel indices")
    source_layout: Literal["xyz", "zyx"] | None = Field(
        None,
        title="Model's index layout",
        description="Column order of the model's own voxel indices (default: same as `layout`). When it differs "
        "from `layout`, weights and geometry are converted (kernel axes and spatial shapes reversed).",
    )
    output_bound_headroom: float = Field(
        2.0, ge=1.0, title="Warn when max voxels seen x headroom exceeds output_bound",
        description="The export warns (and notes) when calibration comes within this factor of output_bound.")
    output_bound: int = Field(
        200000,
        ge=1,
        title="output_bound",
        description="Capacity in points of every conv (NVIDIA's exporters write 200000, libspconv's parser default "
        "is 150000; a nuScenes frame has 60k-120k voxels). Size it for deployment data, not the calibration set: "
        "the export fails if a layer produced more points in calibration and warns when it came within "
        "output_bound_headroom of it.",
    )
    inputs: dict[str, str] | None = CALL_INPUTS
    outputs: list[str] | None = CALL_OUTPUTS
    margin_db: float = MARGIN_DB
    compat: Literal["none", "cuda-centerpoint", "cuda-bevfusion"] = Field(
        "none",
        title="Compatibility profile",
        description="Write the file NVIDIA's application loads: 'cuda-centerpoint' (zyx; ScatterDense -> Reshape "
        "[1, C*Z, Y, X]) or 'cuda-bevfusion' (xyz or zyx; ScatterDense -> Transpose -> Reshape [1, C*Z, X, Y]), "
        "one output, int8 layers fed int8. 'none': the model's own output arrangement.",
    )
    allow_fp16_to_int8: bool = Field(
        False,
        title="Allow int8 layers that read fp16",
        description="Write int8 layers whose input tensor is fp16 (NVIDIA's exporters never do; libspconv does not "
        "document it). Without it such a chain is an error naming the share group that keeps it int8.",
    )

    @model_validator(mode="after")
    def _compat_chain(self) -> OnnxSparseExport:
        if self.compat == "cuda-centerpoint" and self.layout != "zyx":
            raise ValueError("compat: cuda-centerpoint needs layout: zyx (CUDA-CenterPoint indexes voxels z, y, x)")
        if self.compat != "none" and self.allow_fp16_to_int8:
            raise ValueError(f"compat: {self.compat} loads int8 chains only; remove allow_fp16_to_int8")
        return self


class TensorRTExport(ExportBase):
    """A TensorRT engine built from an onnx-qdq export (GPU only)."""

    format: Literal["tensorrt"] = Field(title="Format")
    source: str = Field(title="Source", description="`path` of the onnx-qdq export to build from.")

    _source = field_validator("source")(classmethod(lambda cls, v: str(safe_relative_path(v, reserved=False))))
    workspace_gb: float = Field(2.0, gt=0, title="Workspace (GiB)")
    required: bool = Field(False, title="Required", description="Fail (instead of skip) without a GPU.")
    shapes: dict[str, dict[Literal["min", "opt", "max"], list[int]]] | None = Field(
        None,
        title="Optimisation profile",
        description="min/opt/max shape per input name; default: 1 on each dynamic axis for min, the captured "
        "shape for opt and max.",
    )
    margin_db: float = MARGIN_DB


ExportEntry = Annotated[OnnxQdqExport | OnnxSparseExport | TensorRTExport, Field(discriminator="format")]


# --------------------------------------------------------------------------- tuning
class TuneSection(Section):
    """Accuracy-driven tuning: disable the most sensitive groups until the drop is within budget."""

    metric: str = Field(title="Metric", description="Key of the evaluate() result to protect.")
    max_drop: float = Field(gt=0, title="Maximum drop")
    relative: bool = Field(False, title="Relative", description="max_drop is a fraction of the FP32 metric.")
    budget: int = Field(40, ge=2, title="Evaluation budget", description="Most evaluate() calls tuning may make.")
    strategy: Literal["leave_one_out", "fidelity"] = Field(
        "leave_one_out",
        title="Strategy",
        description="How groups are ranked: leave_one_out (one evaluation per group) or fidelity (per-quantizer "
        "SQNR on one batch, no evaluations).",
    )
    higher_is_better: bool = Field(True, title="Higher is better")


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
        qdq_paths: set[str] = set()
        for i, message in path_conflicts([PurePosixPath(e.path) for e in self.export]):
            errors.append((("export", i, "path"), message))
        for i, entry in enumerate(self.export):
            if isinstance(entry, OnnxQdqExport):
                qdq_paths.add(entry.path)
            if isinstance(entry, TensorRTExport) and entry.source not in qdq_paths:
                known = ", ".join(sorted(qdq_paths)) or "none"
                errors.append((("export", i, "source"), f"source {entry.source!r} is not the path of an earlier "
                               f"onnx-qdq export (earlier onnx-qdq paths: {known})"))
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
