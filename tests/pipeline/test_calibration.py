"""Calibration driver: amax values, loud failures, disable, save/load round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from recipe_engine.pipeline import apply, calibrate, load_quantized, save_quantized
from recipe_engine.quant import backend
from recipe_engine.recipe import RecipeError
from tests.helpers import build_dense, dense_batches

RECIPE = {
    "recipe": "tiny", "version": "1.0.0",
    "model": {"factory": "tests.helpers:build_dense"},
    "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d|ConvTranspose2d", "BatchNorm2d"]}],
    "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}},
              {"select": {"type": "tests.helpers:TinyDenseNet"}, "ops": {"cat": "act"}}],
    "disable": ["lateral"],
    "calibration": {"method": "percentile", "percentile": 99.9},
}


def test_max_weight_amax_equals_per_channel_abs_max() -> None:
    model = build_dense()
    batches = dense_batches()
    state = apply(model, RECIPE, batches)
    calibrate(model, RECIPE, batches)
    weight = model.stem[0].weight.detach()
    expected = weight.abs().flatten(1).amax(1)
    assert torch.allclose(backend.get_amax(state.quantizers["stem.0.weight"]).flatten(), expected)
    # ConvTranspose2d weights are [in, out, k, k]: per output channel is axis 1
    up = model.up[0].weight.detach()
    assert torch.allclose(backend.get_amax(state.quantizers["up.0.weight"]).flatten(),
                          up.abs().transpose(0, 1).flatten(1).amax(1))


def test_percentile_amax_is_below_max_and_disable_applies() -> None:
    model = build_dense()
    batches = dense_batches()
    state = apply(model, RECIPE, batches)
    result = calibrate(model, RECIPE, batches)
    stem_input = result.amax["stem.0.input"]
    assert stem_input["method"] == "percentile"
    peak = max(float(b.abs().max()) for b in batches)
    assert 0.5 * peak < stem_input["amax_max"] < peak
    assert state.disabled == ["lateral.input", "lateral.weight"]
    assert not backend.is_enabled(state.quantizers["lateral.input"])
    assert backend.is_enabled(state.quantizers["head.input"])


def test_quantizer_that_sees_no_data_fails_naming_it() -> None:
    model = build_dense()
    batches = dense_batches()
    apply(model, RECIPE, batches)
    model.forward = lambda x: model.head(torch.cat([x[:, :3].repeat(1, 4, 1, 1)] * 1, 1))  # skips stem/up/lateral
    with pytest.raises(RecipeError, match=r"stem\.0\.input saw no data"):
        calibrate(model, RECIPE, [torch.randn(2, 3, 8, 8)])


def test_nan_data_fails_loudly() -> None:
    model = build_dense()
    batches = dense_batches()
    apply(model, RECIPE, batches)
    bad = [b.clone() for b in batches]
    bad[0][0, 0, 0, 0] = math.inf
    with pytest.raises(RecipeError, match="not finite|non-finite amax"):
        calibrate(model, {**RECIPE, "calibration": {"method": "max"}}, bad)


def _saved_model(tmp_path) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Calibrate the tiny model, save it to ``tmp_path/model.pt``; its batches and output on the first."""
    model = build_dense()
    batches = dense_batches()
    apply(model, RECIPE, batches)
    calibrate(model, RECIPE, batches)
    with torch.no_grad():
        expected = model(batches[0])
    save_quantized(model, tmp_path / "model.pt", RECIPE)
    return batches, expected


def test_save_load_round_trip_is_identical_on_cpu(tmp_path) -> None:
    batches, expected = _saved_model(tmp_path)
    restored = load_quantized(tmp_path / "model.pt", model=build_dense())
    with torch.no_grad():
        got = restored(batches[0])
    assert torch.equal(got, expected)
    state = restored.recipe_state
    assert state.disabled == ["lateral.input", "lateral.weight"]
    assert not backend.is_enabled(state.quantizers["lateral.weight"])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["format"] == "recipe-engine/model/1"


def test_load_in_a_fresh_interpreter(tmp_path) -> None:
    """A new process that never imported the backend's library loads model.pt (the import guard used to
    refuse what pytorch-quantization itself imports, e.g. absl)."""
    import subprocess
    import sys

    batches, expected = _saved_model(tmp_path)
    torch.save(batches[0], tmp_path / "x.pt")
    torch.save(expected, tmp_path / "y.pt")
    script = (
        "import sys, torch\n"
        "from recipe_engine.model_file import load_quantized\n"
        "from tests.helpers import build_dense\n"
        "m = load_quantized(sys.argv[1] + '/model.pt', model=build_dense())\n"
        "with torch.no_grad():\n"
        "    got = m(torch.load(sys.argv[1] + '/x.pt'))\n"
        "print('equal', torch.equal(got, torch.load(sys.argv[1] + '/y.pt')))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "equal True" in done.stdout
