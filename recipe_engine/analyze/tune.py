"""The ``tune:`` step of ``recipe run``: disable the most sensitive quantizer groups until the metric
drop is within budget (kept apart from :mod:`.runner`, which drives ``recipe sensitivity`` through the
pipeline, so that the pipeline can call this without an import cycle)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from ..quant import backend
from ..quant.apply import get_state
from ..recipe.loader import LoadedRecipe
from ..recipe.lock import lock_text, recipe_sha256
from ..util.atomic import atomic_write_text
from .fidelity import measure_fidelity
from .sensitivity import Scorer, enabled_groups, greedy_disable


def run_tune(model: nn.Module, loaded: LoadedRecipe, out: Path, calib: Any, val: Any, forward: Any,
             evaluate: Any, fp32_metrics: dict[str, float] | None) -> dict[str, Any]:
    """The ``tune:`` step: disable the most sensitive groups until the metric drop is within budget."""
    tune = loaded.spec.tune
    if evaluate is None or not fp32_metrics:
        raise loaded.error(("tune",), "tune needs data.evaluate (and validation data) to measure the drop")
    if tune.metric not in fp32_metrics:
        raise loaded.error(("tune", "metric"), f"metric {tune.metric!r} is not in evaluate() output "
                           f"{sorted(fp32_metrics)}")
    fp32 = fp32_metrics[tune.metric]
    allowed = tune.max_drop * abs(fp32) if tune.relative else tune.max_drop
    sign = 1.0 if tune.higher_is_better else -1.0
    target = sign * fp32 - allowed
    groups = enabled_groups(get_state(model))
    scorer = Scorer(model, lambda m, b: {k: sign * v for k, v in evaluate(m, b).items()}, val, calib, forward,
                    tune.metric)
    if tune.strategy == "leave_one_out":
        if tune.budget < len(groups) + 2:
            raise loaded.error(("tune", "budget"), f"leave_one_out needs at least {len(groups) + 2} evaluations "
                               f"for {len(groups)} groups", hint="raise tune.budget or use strategy: fidelity")
        order = []
        for group in groups:
            for quantizer in group.quantizers:
                backend.set_enabled(quantizer, False)
            order.append((scorer(), group.name))
            for quantizer in group.quantizers:
                backend.set_enabled(quantizer, True)
        ranking = [name for _, name in sorted(order, key=lambda item: -item[0])]
    else:
        fidelity = {f.name: f.sqnr_db for f in measure_fidelity(model, next(iter(calib)), forward)}
        worst = {g.name: min((fidelity.get(n, math.inf) for n in g.quantizer_names), default=math.inf)
                 for g in groups}
        ranking = sorted(worst, key=lambda name: worst[name])
    remaining = tune.budget - scorer.calls
    disabled, steps, success = greedy_disable(scorer, groups, ranking, target, budget=max(1, remaining))
    final = sign * steps[-1].metric
    names = [n for g in groups if g.name in disabled for n in g.quantizer_names]
    spec = loaded.spec.model_copy(update={"disable": list(loaded.spec.disable) + names, "tune": None})
    from ..train.distributed import is_main

    if is_main():  # under torchrun every rank tunes identically; rank 0 alone writes
        atomic_write_text(out / "recipe.tuned.lock.yaml", lock_text(spec, [str(loaded.path)]))
    return {  # figures on the selection split (validation); the run reports data.test beside them
        "metric": tune.metric, "selected_on": "validation", "fp32": fp32, "final": final, "drop": fp32 - final if tune.higher_is_better
        else final - fp32, "allowed_drop": allowed, "success": success, "evaluations": scorer.calls,
        "disabled_groups": disabled, "disabled_quantizers": names,
        "steps": [{"disabled": s.disabled, "metric": sign * s.metric} for s in steps],
        "tuned_recipe_sha256": recipe_sha256(spec), "tuned_lock": "recipe.tuned.lock.yaml",
    }
