"""What the benchmark runs per zoo model: its recipes, metric, dense parts, QAT and PTQ budgets, quick sizes.

:class:`Settings` is the command line (``--quick``, seeds, threads, models); :class:`ModelSpec` one zoo
model. Every engine row is ``recipes/<model>_int8.yaml`` plus ``--set`` overrides built here, so the
table's "how" column is exactly what reproduces a row with ``recipe run``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .common import RECIPES

METHODS = ("max", "entropy", "mse", "percentile")
STEPS = ("bias_correction", "cle", "range_search", "adaround", "brecq")
BEST_COMBINATION = ("range_search", "adaround")
SLOW_STEPS = ("adaround", "brecq")


@dataclass(frozen=True)
class DenseSpec:
    """A dense submodule the peers quantize (onnxruntime, by module path); ``rows``: inputs are point rows."""

    path: str
    rows: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model in the benchmark."""

    name: str
    metric: str
    dense: tuple[DenseSpec, ...]  # the parts onnxruntime quantizes (the rest stays FP32 PyTorch)
    qat_recipe: str | None = None  # a shipped QAT recipe used instead of the plain recipe + `qat=`
    brecq_blocks: tuple[str, ...] | None = None  # None: the recipe's fuse[].block types
    tune_strategy: str = "leave_one_out"
    extra_recipes: tuple[tuple[str, str], ...] = ()  # (label, file in recipes/): rows when the file exists
    detector: bool = True
    sparse: str | None = None  # the spconv encoder's module path (Model-Optimizer leaves it FP32)

    @property
    def recipe(self) -> Path:
        return RECIPES / f"{self.name}_int8.yaml"


def _qat(steps: int, weight_decay: float | None = None, clip: float | None = None) -> str:
    kwargs = {"lr": 1.0e-4, **({"weight_decay": weight_decay} if weight_decay else {})}
    section = {"steps": steps, "optimizer": {"name": "AdamW", "kwargs": kwargs}, "seed": 0}
    if clip:
        section["grad_clip"] = clip
    return "qat=" + json.dumps(section)


MODELS: dict[str, ModelSpec] = {
    "pointpillars": ModelSpec(
        "pointpillars", "mAP", (DenseSpec("pillar_net.pfn", rows=True), DenseSpec("bev")),
        brecq_blocks=("pillar_net.pfn", "bev.backbone.blocks.0", "bev.backbone.blocks.1", "bev.backbone.blocks.2",
                      "bev.neck", "bev.head"),
        extra_recipes=(("mixed precision: PFN Linear in full precision (sensitivity-guided)",
                        "pointpillars_int8_mixed.yaml"),
                       ("smooth PTQ step", "pointpillars_int8_smooth.yaml"))),
    "digits": ModelSpec("digits", "top1", (DenseSpec(""),), detector=False),
    "centerpoint": ModelSpec("centerpoint", "mAP", (DenseSpec("bev"),), qat_recipe="centerpoint_qat.yaml",
                             tune_strategy="fidelity", sparse="encoder"),
    "bevfusion": ModelSpec("bevfusion", "mAP", (DenseSpec("camera"), DenseSpec("bev")),
                           tune_strategy="fidelity", sparse="lidar"),
}


@dataclass(frozen=True)
class Settings:
    """The command line: full or ``--quick`` sizes, seeds, threads, models."""

    quick: bool
    seeds: tuple[int, ...]
    threads: int
    models: tuple[str, ...]
    out: Path | None = None
    only: tuple[str, ...] = field(default_factory=tuple)  # --only: measure just rows whose label has one of these

    # ------------------------------------------------------------------ overrides
    def base(self, spec: ModelSpec) -> list[str]:
        """Overrides of every engine run of ``spec``: exports off, and the quick sizes."""
        out = ["export=[]"]
        if self.quick:
            out.append("calibration.batches=2" if not spec.detector else "vars.calib_batches=2")
            if spec.detector:
                out += ["data.validation.kwargs.count=16", "data.test.kwargs.count=16"]
        return out

    @staticmethod
    def seed(seed: int) -> list[str]:
        """The calibration subset seed (the zoo's ``calibration_data(seed=...)``)."""
        return [f"data.calibration.kwargs.seed={seed}"]

    def step(self, name: str, spec: ModelSpec) -> dict:
        """One PTQ step's settings: the library defaults in the full run, small budgets with ``--quick``."""
        step: dict = {"step": name}
        if name == "brecq" and spec.brecq_blocks:
            step["blocks"] = list(spec.brecq_blocks)
        if self.quick:
            step.update({"bias_correction": {"batches": 1}, "cle": {}, "range_search": {"grid": 8, "batches": 1},
                         "adaround": {"iterations": 10, "batches": 1},
                         "brecq": {"iterations": 10, "batches": 1}}[name])
        return step

    def ptq(self, names: tuple[str, ...], spec: ModelSpec) -> list[str]:
        """``ptq=[...]`` override for the steps ``names`` in order."""
        return ["ptq=" + json.dumps([self.step(n, spec) for n in names])]

    def qat(self, spec: ModelSpec) -> list[str]:
        """The QAT row's overrides (a short ``qat:`` section; quick: a few steps)."""
        steps = 5 if self.quick else 100
        if spec.qat_recipe:
            return [f"qat.steps={steps}"] if self.quick else []
        if spec.name == "bevfusion":
            return [_qat(steps, 0.01, 10.0)]
        if spec.name == "pointpillars":
            return [_qat(steps, 0.01, 10.0)]
        return [_qat(steps)]

    def tune(self, spec: ModelSpec) -> list[str]:
        """A ``tune:`` section: disable the most sensitive groups until the drop is within 0.5."""
        return ["tune=" + json.dumps({"metric": spec.metric, "max_drop": 0.5, "strategy": spec.tune_strategy,
                                      "budget": 60})]

    @property
    def calib_batches(self) -> int | None:
        """The number of calibration batches the peers use (None: each recipe's own)."""
        return 2 if self.quick else None
