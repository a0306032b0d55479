"""``recipe sensitivity`` and the ``tune:`` step of ``recipe run``."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import yaml

from .. import data as data_mod
from ..quant.apply import get_state
from ..quant.precision import precision_label
from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe
from ..util.atomic import atomic_write_bytes, atomic_write_text
from ..util.jsonio import json_text
from .sensitivity import FIDELITY_METRIC, Scorer, SensitivityResult, enabled_groups, greedy_disable, profile
from .tune import run_tune  # noqa: F401 - re-exported


def _bar_chart(result: SensitivityResult, target: Path) -> None:
    from .plots import sensitivity_png

    atomic_write_bytes(target, sensitivity_png(result.ranked(), result.metric))


def derived_recipe_text(loaded: LoadedRecipe, disabled_quantizers: list[str], out: Path, note: str) -> str:
    """A recipe that extends ``loaded`` and appends ``disabled_quantizers`` to its disable list."""
    spec = loaded.spec
    parent = os.path.relpath(loaded.path.resolve(), out.resolve()) if loaded.path.exists() else None
    if parent is None:
        raise RecipeError("cannot derive a recipe from an in-memory recipe (no file to extend)")
    data = {"recipe": f"{spec.recipe}-tuned", "version": spec.version, "description": note,
            "extends": parent, "disable+": disabled_quantizers}
    return "# derived by recipe-engine\n" + yaml.safe_dump(data, sort_keys=False)


def run_sensitivity(loaded: LoadedRecipe, out: Path, max_drop: float | None = None, min_sqnr: float = 30.0,
                    show_progress: bool = True) -> dict[str, Any]:
    """Profile every quantizer group and write table, CSV, JSON, bar chart and a derived recipe."""
    from ..pipeline import apply, calibrate

    out.mkdir(parents=True, exist_ok=True)
    model = data_mod.build_model(loaded)
    calib = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)
    evaluate = data_mod.evaluate_fn(loaded)
    val = data_mod.make_data(loaded, "validation") if evaluate else None
    apply(model, loaded, calib, forward)
    calibrate(model, loaded, calib, forward, show_progress)
    groups = enabled_groups(get_state(model))
    precision = precision_label(get_state(model))
    metric = loaded.spec.tune.metric if loaded.spec.tune else None
    scorer = Scorer(model, evaluate, val, calib, forward, metric)
    result = profile(model, scorer, groups, show_progress)
    ranked = result.ranked()
    table = {"metric": result.metric, "fp32": result.fp32, "int8": result.int8, "precision": precision,
             "evaluations": result.evaluations,
             "seconds": result.seconds, "groups": [r.as_dict() for r in ranked]}
    target = (result.fp32 - (max_drop if max_drop is not None else 1.0)) if result.metric != FIDELITY_METRIC \
        else min_sqnr
    disabled, steps, success = greedy_disable(scorer, groups, [r.group for r in ranked], target,
                                              budget=len(groups) + 1)
    names = [n for g in groups if g.name in disabled for n in g.quantizer_names]
    table["derived"] = {"target": target, "success": success, "disabled_groups": disabled,
                        "steps": [s.as_dict() for s in steps]}
    atomic_write_text(out / "sensitivity.json", json_text(table, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "only_this", "all_but_this", "gain_if_disabled", "quantizers"])
    for row in ranked:
        writer.writerow([row.group, row.only_this, row.all_but_this, row.gain_if_disabled, " ".join(row.quantizers)])
    atomic_write_text(out / "sensitivity.csv", buffer.getvalue())
    _bar_chart(result, out / "sensitivity.png")
    note = (f"{loaded.spec.recipe} with {len(disabled)} sensitive group(s) in full precision: "
            f"{result.metric} {steps[-1].metric:.4g} (target {target:.4g}, fp32 {result.fp32:.4g})")
    atomic_write_text(out / "derived.yaml", derived_recipe_text(loaded, names, out, note))
    table["derived"]["path"] = str(out / "derived.yaml")
    return table
