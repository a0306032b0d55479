"""An FP8 recipe whose Q/DQ export is below opset 19 fails at `recipe plan` / the start of `recipe run`
(the export pre-check), not after calibration and evaluation at the export stage."""

from __future__ import annotations

import pytest

pytest.importorskip("modelopt.torch.quantization")

from recipe_engine.pipeline import plan_recipe  # noqa: E402
from recipe_engine.recipe import RecipeError  # noqa: E402
from recipe_engine.recipe.loader import load_recipe_data  # noqa: E402
from tests.backends.test_fp8 import fp8_recipe  # noqa: E402

DATA = {"model": {"factory": "tests.helpers:build_dense"},
        "data": {"calibration": {"factory": "tests.helpers:dense_batches"}}}


def test_fp8_below_opset_19_fails_in_the_export_precheck() -> None:
    recipe = load_recipe_data(fp8_recipe(**DATA, export=[{"format": "onnx-qdq", "path": "net.onnx"}]))
    with pytest.raises(RecipeError, match=r"export\[0\]\.opset: net\.onnx: FP8 .*quantizers \(stem\.0\.input") as info:
        plan_recipe(recipe)
    assert "this export uses opset 17" in str(info.value) and "hint: set `opset: 19`" in str(info.value)


def test_an_int8_only_part_below_opset_19_is_fine() -> None:
    recipe = fp8_recipe(**DATA, export=[{"format": "onnx-qdq", "module": "head", "path": "head.onnx"}])
    plan_recipe(load_recipe_data(recipe))  # the head's quantizers are int8: opset 17 exports them
