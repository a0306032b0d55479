"""The rows of one model, in table order, each with how to measure it for one seed and a run priority.

A :class:`RowPlan` is one method: its label, what produces it (recipe + ``--set`` overrides, or the peer's
configuration), a ``measure(seed)`` callable, whether it depends on the seed, and a priority that orders
the run: every model's fast rows first, then the QAT runs, PointPillars' slow reconstruction rows, then
the other models' PTQ-step rows (minutes each on CenterPoint and BEVFusion), so that a run cut short has
the most informative figures (priorities: 0 fast rows, 1 QAT, 2-4 PointPillars' adaround, range_search +
adaround, brecq, 5 the other models' PTQ steps except cle).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from . import engine_rows, handwritten_rows, peers
from .common import RECIPES, Measure
from .models import BEST_COMBINATION, METHODS, SLOW_STEPS, STEPS, ModelSpec, Settings

#: Run order of PointPillars' slow rows, after every QAT run (priority 1): adaround, the best combination, brecq.
PP_SLOW = {("adaround",): 2, BEST_COMBINATION: 3, ("brecq",): 4}


@dataclass
class RowPlan:
    """One method of one model."""

    label: str
    how: str
    measure: Callable[[int], Measure] | None  # None: not measurable here (``status`` says why)
    priority: int = 0
    seeded: bool = True  # False: the same figure for every seed (measured once)
    status: str = ""


def _how(recipe: str, overrides: list[str]) -> str:
    return f"`{recipe}` " + " ".join(f"`--set {o}`" for o in overrides)


def plan(spec: ModelSpec, settings: Settings) -> list[RowPlan]:
    """Every row of ``spec``'s table."""
    from recipe_engine.recipe import load_recipe

    default = load_recipe(spec.recipe, ["export=[]"]).spec.calibration.method
    recipe = spec.recipe.name
    pp = spec.name == "pointpillars"
    rows = [RowPlan("FP32", f"`{recipe}` model and checkpoint", lambda _s: engine_rows.fp32(spec, settings),
                    seeded=False)]
    for method in METHODS:
        overrides = [f"calibration.method={method}"]
        label = f"INT8 PTQ, calibration {method}" + (" (the recipe's own)" if method == default else "")
        rows.append(RowPlan(label, _how(recipe, overrides),
                            functools.partial(lambda s, o: engine_rows.ptq_row(spec, settings, o, s), o=overrides)))
    for steps in [(s,) for s in STEPS] + [BEST_COMBINATION]:
        overrides = settings.ptq(steps, spec)
        slow = any(s in SLOW_STEPS for s in steps)
        priority = (PP_SLOW.get(steps, 0) if slow else 0) if pp else (0 if steps == ("cle",) else 5)
        label = f"INT8 + PTQ {' + '.join(steps)}" + (" (quick budget)" if settings.quick else "")
        rows.append(RowPlan(label, _how(recipe, overrides),
                            functools.partial(lambda s, o: engine_rows.ptq_row(spec, settings, o, s), o=overrides),
                            priority=priority))
    for label, name in spec.extra_recipes:
        path = RECIPES / name
        if path.is_file():
            rows.append(RowPlan(f"INT8, {label}", _how(name, []),
                                functools.partial(lambda s, p: engine_rows.ptq_row(spec, settings, [], s, p), p=path)))
        else:
            rows.append(RowPlan(f"INT8, {label}", f"`recipes/{name}`", None, status="not present"))
    if spec.sparse:  # the quantized set Model-Optimizer's default reaches: it has no spconv layers
        overrides = [f"disable+=[{spec.sparse}]"]
        rows.append(RowPlan(f"INT8, sparse encoder `{spec.sparse}` in full precision (Model-Optimizer's reach)",
                            _how(recipe, overrides),
                            functools.partial(lambda s, o: engine_rows.ptq_row(spec, settings, o, s), o=overrides)))
    tune = settings.tune(spec)
    rows.append(RowPlan(f"INT8 + `tune:` ({spec.tune_strategy}, max drop 0.5 on validation)", _how(recipe, tune),
                        lambda s: engine_rows.recipe_row(spec, settings, tune, s, "int8")))
    qat = settings.qat(spec)
    qat_recipe = RECIPES / spec.qat_recipe if spec.qat_recipe else None
    rows.append(RowPlan("INT8 QAT" + (" (quick: 5 steps)" if settings.quick else ""),
                        _how(spec.qat_recipe or recipe, qat),
                        lambda s: engine_rows.recipe_row(spec, settings, qat, s, "qat", qat_recipe), priority=1))
    parts = ", ".join(f"`{d.path}`" if d.path else "whole network" for d in spec.dense)
    rows.append(RowPlan("onnxruntime FP32 (dense parts as ORT sessions)", f"FP32 ONNX of {parts}",
                        lambda s: peers.ort_fp32(spec, settings, s), seeded=False))
    for method in peers.ORT_METHODS:
        rows.append(RowPlan(f"onnxruntime quantize_static {method}",
                            f"QDQ, S8S8 symmetric, per-channel weights; {parts}",
                            functools.partial(lambda s, m: peers.ort_row(spec, settings, s, m), m=method)))
    version = peers.modelopt_version()
    rows.append(RowPlan(f"Model-Optimizer {version or ''} INT8_DEFAULT_CFG (in-process, whole model)",
                        "`mtq.quantize(model, INT8_DEFAULT_CFG, forward_loop)` on the same batches",
                        (lambda s: peers.modelopt_row(spec, settings, s)) if version else None,
                        status="" if version else "not present: nvidia-modelopt does not import"))
    if spec.name == "centerpoint":
        rows.append(RowPlan("hand-written pytorch-quantization (NVIDIA style, MSE)",
                            "`benchmarks/accuracy_parts/handwritten_centerpoint.py`",
                            lambda s: handwritten_rows.centerpoint(spec, settings, s)))
    if pp:
        for module, label, kwargs in (
                ("handwritten_pointpillars", "hand-written pytorch-quantization (NVIDIA style, MSE)", {}),
                ("handwritten_pointpillars", "hand-written pytorch-quantization, first layer FP16 (NVIDIA style)",
                 {"first_layer_fp16": True}),
                ("handwritten_pointpillars", "hand-written pytorch-quantization (NVIDIA style, percentile 99.99)",
                 {"method": "percentile"}),
                ("handwritten_pointpillars",
                 "hand-written pytorch-quantization, first layer FP16 (NVIDIA style, percentile 99.99)",
                 {"method": "percentile", "first_layer_fp16": True}),
                ("modelopt_pointpillars", "Model-Optimizer INT8 default (`modelopt_pointpillars.py`)", {})):
            present = handwritten_rows.optional(module) is not None
            call = functools.partial(lambda s, m, k: handwritten_rows.module_row(m, settings, s, **k), m=module,
                                     k=kwargs)
            rows.append(RowPlan(label, f"`benchmarks/accuracy_parts/{module}.py`" + "".join(
                f" `{k}={v!r}`" for k, v in kwargs.items()), call if present else None,
                status="" if present else "not present"))
    return rows
