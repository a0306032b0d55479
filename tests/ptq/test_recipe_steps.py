"""`ptq:` in a recipe: located errors, the run stage, exports and model.pt carrying the results."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import yaml
from click.testing import CliRunner

import recipe_engine as re8
from recipe_engine import ptq
from recipe_engine.cli import main
from recipe_engine.ptq.registry import unregister
from recipe_engine.recipe.errors import RecipeError
from recipe_engine.zoo import digits
from tests.conftest import ROOT

DIGITS = ROOT / "recipes" / "digits_int8.yaml"


def _recipe(write, *steps: str):
    lines = ["recipe: digits-ptq", "version: 1.0.0", f"extends: {DIGITS}", "export: []", "ptq:"]
    return write("r.yaml", "\n".join(lines + [f"  - {step}" for step in steps]) + "\n")


def test_unknown_step_and_bad_settings_are_located_errors(write) -> None:
    path = _recipe(write, "{step: adaroud}", "{step: cle, iteratons: 3}", "{step: adaround, batches: 0}")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output
    assert f"{path}:6:5: ptq[0]: unknown PTQ step 'adaroud'; did you mean 'adaround'?" in lines
    assert f"{path}:7:17: ptq[1].iteratons: unknown key" in lines and "did you mean 'iterations'?" in lines
    assert f"{path}:8:" in lines and "ptq[2].batches" in lines and "greater than or equal to 1" in lines


def test_a_layer_pattern_that_matches_nothing_is_located_at_run_time(write) -> None:
    path = _recipe(write, "{step: bias_correction, layers: [stem.0, blok1.conv1]}")
    loaded = re8.load_recipe(path)
    model = re8.prepare(digits.build(pretrained=True), loaded)
    try:
        ptq.run(model, loaded)
    except RecipeError as exc:
        text = str(exc)
    else:
        raise AssertionError("no error")
    assert text.startswith(f"{path}:6:") and "ptq[0].layers: 'blok1.conv1' matches no layer" in text
    assert "block1.conv1" in text  # the nearest names


def test_recipe_run_with_ptq_steps_exports_and_saves_the_rounded_weights(tmp_path, write) -> None:
    path = write("r.yaml", f"""
        recipe: digits-ptq
        version: 1.0.0
        extends: {DIGITS}
        export:
          - {{format: onnx-qdq, path: digits.onnx}}
        ptq:
          - {{step: range_search, batches: 1, grid: 8}}
          - {{step: adaround, batches: 1, iterations: 15, layers: [fc, block2.conv2]}}
          - {{step: bias_correction, batches: 2}}
        """)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["step"] for s in metrics["ptq"]] == ["range_search", "adaround", "bias_correction"]
    assert metrics["ptq"][1]["layers"] == 2 and metrics["timings"]["ptq_seconds"] > 0
    assert metrics["exports"][0]["status"] == "ok"  # the Q/DQ file carries the rounded weights, verified
    assert metrics["int8"]["top1"] > 99.0
    model = re8.load_quantized(out / "model.pt", model=digits.build().eval())
    from tests.ptq.common import weights_on_grid

    assert weights_on_grid(model.fc) < 1e-6 and weights_on_grid(model.block2.conv2) < 1e-6
    assert digits.evaluate(model, digits.val_data())["top1"] == metrics["int8"]["top1"]


def test_steps_from_python_with_a_registered_extension() -> None:
    from typing import Literal

    from pydantic import BaseModel

    class Scale(BaseModel):
        step: Literal["scale_fc"]
        factor: float = 2.0
        batches: int = 1

    @ptq.register("scale_fc", Scale)
    def scale_fc(context, settings):
        with torch.no_grad():
            context.model.fc.bias.mul_(settings.factor)
        return {"scaled": 1}

    try:
        recipe = re8.load_recipe(DIGITS, overrides=["export=[]", "ptq=[{step: scale_fc, factor: 3.0}]"])
        calib = digits.calibration_data(count=64)
        model = re8.prepare(digits.build(pretrained=True), recipe, calib)
        bias = model.fc.bias.detach().clone()
        records = ptq.run(model, recipe, calib)  # the recipe accepts the registered step
        assert records[0]["scaled"] == 1 and torch.allclose(model.fc.bias, 3 * bias)
        records = ptq.run(model, [{"step": "scale_fc", "factor": 0.5}], calib, digits.forward_batch)
        assert torch.allclose(model.fc.bias, 1.5 * bias)
        assert "scale_fc" in ptq.registered()
    finally:
        unregister("scale_fc")
    assert "scale_fc" not in ptq.registered()


def test_the_ptq_package_and_the_schema_import_no_torch() -> None:
    code = ("import sys, recipe_engine.ptq, recipe_engine.recipe.schema as s\n"
            "assert 'ptq' in s.Recipe.model_fields\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_lock_records_the_steps(write) -> None:
    from recipe_engine.recipe.lock import lock_text

    lock = yaml.safe_load(lock_text(re8.load_recipe(_recipe(write, "{step: adaround}")).spec))
    assert lock["ptq"][0]["step"] == "adaround" and lock["ptq"][0]["iterations"] == 200


def test_brecq_blocks_default_to_the_recipes_fused_block_types() -> None:
    recipe = re8.load_recipe(DIGITS, overrides=["export=[]", "ptq=[{step: brecq, iterations: 5, batches: 1}]"])
    calib = digits.calibration_data(count=64)
    model = re8.prepare(digits.build(pretrained=True), recipe, calib)
    record = ptq.run(model, recipe, calib)[0]
    assert record["blocks"] == 2  # block1, block2 (digits:ResidualBlock in fuse[].block)
    assert [u["unit"] for u in record["units"]] == ["stem.0", "block1", "block2", "fc"]
    assert record["units"][2]["layers"] == ["block2.downsample.0", "block2.conv1", "block2.conv2"]
