"""``qat:`` (quantization-aware fine-tuning) and ``tune:`` (accuracy-driven tuning)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from . import Section


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

