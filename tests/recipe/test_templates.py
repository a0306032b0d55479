"""Sandboxed Jinja2 templating of recipe values."""

from __future__ import annotations

import pytest

from recipe_engine.recipe import RecipeError, load_recipe

HEAD = "recipe: demo\nversion: 1.0.0\n"


def test_single_expression_keeps_native_type(write) -> None:
    path = write("r.yaml", HEAD + "vars: {n: 6}\ncalibration:\n  batches: '{{ n * 2 }}'\n  method: mse\n")
    assert load_recipe(path).spec.calibration.batches == 12


def test_text_templates_render_to_strings(write) -> None:
    path = write("r.yaml", HEAD + "vars: {stage: 3}\ndescription: 'stage {{ stage }} of 4'\n")
    assert load_recipe(path).spec.description == "stage 3 of 4"


def test_env_is_readable_with_default(write, monkeypatch) -> None:
    monkeypatch.setenv("RECIPE_TEST_BATCHES", "5")
    path = write("r.yaml", HEAD + "calibration:\n  batches: '{{ env.RECIPE_TEST_BATCHES | int }}'\n"
                 "description: \"{{ env.get('NOPE_NOT_SET', 'fallback') }}\"\n")
    spec = load_recipe(path).spec
    assert spec.calibration.batches == 5
    assert spec.description == "fallback"


def test_child_vars_reach_parent_templates(write) -> None:
    write("base.yaml", HEAD + "calibration:\n  batches: '{{ calib_batches }}'\n")
    child = write("child.yaml", "recipe: child\nversion: 1.0.0\nextends: base.yaml\nvars: {calib_batches: 7}\n")
    assert load_recipe(child).spec.calibration.batches == 7
    assert load_recipe(child, ["vars.calib_batches=3"]).spec.calibration.batches == 3


@pytest.mark.parametrize("expression", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ vars.__class__.__init__.__globals__['os'] }}",
    "{{ env.__class__.__base__.__subclasses__() }}",
])
def test_sandbox_refuses_python_internals(write, expression: str) -> None:
    path = write("evil.yaml", HEAD + f"description: \"{expression}\"\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = str(info.value)
    assert f"{path}:3:1:" in text
    assert "sandbox" in text or "undefined" in text
