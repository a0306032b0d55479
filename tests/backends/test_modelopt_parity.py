"""The modelopt backend against the pytorch-quantization backend on the shipped digits recipe.

Both backends' calibrators collect the same statistics from the same data and the engine computes amax
from them with its own searches, so every quantizer gets the same amax: identical for max calibration,
within one histogram bin for entropy/mse/percentile (the tolerance issue 12 asks for; measured: identical).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("modelopt.torch.quantization")

from recipe_engine import backends  # noqa: E402
from recipe_engine import data as data_mod  # noqa: E402
from recipe_engine.calib.methods import amax_from_statistics  # noqa: E402
from recipe_engine.cli import main  # noqa: E402
from recipe_engine.pipeline import apply, calibrate, load_quantized, save_quantized  # noqa: E402
from recipe_engine.quant import backend  # noqa: E402
from recipe_engine.recipe import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "recipes" / "digits_int8.yaml"


def _calibrated(name: str):
    loaded = load_recipe(DIGITS, [f"backend={name}", "calibration.batches=4"])
    model = data_mod.build_model(loaded)
    batches = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)
    state = apply(model, loaded, batches, forward)
    calibrate(model, loaded, batches, forward, show_progress=False)
    return loaded, model, state, batches, forward


@pytest.fixture(scope="module")
def both():
    return {name: _calibrated(name) for name in ("pytorch-quantization", "modelopt")}


def test_quantizers_belong_to_the_recipes_backend(both) -> None:
    for name, (_, _model, state, _, _) in both.items():
        owners = {backends.backend_of(q).name for q in state.quantizers.values()}
        assert owners == {name}
    pq, mo = both["pytorch-quantization"][2], both["modelopt"][2]
    assert list(pq.quantizers) == list(mo.quantizers)  # same selectors, op sites and names
    assert pq.groups == mo.groups and pq.disabled == mo.disabled
    assert len(pq.quantizers) >= 15


def test_same_amax_for_every_quantizer_and_method(both) -> None:
    pq, mo = both["pytorch-quantization"][2], both["modelopt"][2]
    settings = both["pytorch-quantization"][0].spec.calibration
    compared = {"max": 0, "entropy": 0, "mse": 0, "percentile": 0}
    for name, q_pq in pq.quantizers.items():
        q_mo = mo.quantizers[name]
        # the amax the recipe's own method set
        assert torch.equal(backend.get_amax(q_pq).flatten(), backend.get_amax(q_mo).flatten()), name
        s_pq, s_mo = backend.calibration_statistics(q_pq), backend.calibration_statistics(q_mo)
        if "amax" in s_pq:
            assert torch.equal(s_pq["amax"].flatten(), s_mo["amax"].flatten()), name
            compared["max"] += 1
            continue
        width = float(s_pq["edges"][1] - s_pq["edges"][0])
        for method in ("max", "entropy", "mse", "percentile"):
            a = float(amax_from_statistics(s_pq, method, 8, False, settings))
            b = float(amax_from_statistics(s_mo, method, 8, False, settings))
            if method == "max":
                assert a == b, name
            else:
                assert abs(a - b) <= width, (name, method, a, b, width)
            compared[method] += 1
    assert all(count > 0 for count in compared.values()), compared


def test_modelopt_model_saves_and_loads_on_cpu(both, tmp_path) -> None:
    loaded, model, state, batches, forward = both["modelopt"]
    save_quantized(model, tmp_path / "model.pt", loaded)
    restored = load_quantized(tmp_path / "model.pt", model=data_mod.build_model(loaded))
    batch = batches[0] if isinstance(batches, list) else next(iter(batches))
    with torch.no_grad():
        model.eval()
        assert torch.equal(forward(model, batch), forward(restored, batch))


def test_digits_recipe_runs_end_to_end_on_modelopt(tmp_path) -> None:
    args = ["run", str(DIGITS), "--out", str(tmp_path), "--set", "backend=modelopt"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fp32"]["top1"] >= 95.0
    assert metrics["fp32"]["top1"] - metrics["int8"]["top1"] <= 1.0
    qdq = next(e for e in metrics["exports"] if e["format"] == "onnx-qdq")
    assert qdq["status"] == "ok" and qdq["quantize_linear"] >= 15 and qdq["per_channel_weights"] >= 5
    assert "backend: modelopt" in (tmp_path / "recipe.lock.yaml").read_text()
