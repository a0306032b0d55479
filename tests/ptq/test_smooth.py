"""``smooth``: per-input-channel scale migration, FP32 kept, deployed in ONNX, carried by model.pt."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import recipe_engine as re8
from recipe_engine import ptq
from recipe_engine.cli import main
from recipe_engine.model_file import save_quantized
from recipe_engine.ptq import input_scale
from recipe_engine.ptq.context import fp32_copy
from recipe_engine.quant import backend
from recipe_engine.recipe.errors import RecipeError
from recipe_engine.zoo import digits
from tests.conftest import ROOT
from tests.ptq.common import layer_mse
from tests.ptq.models import SparseNet, quantized, recipe, sparse_batches

#: Ranges of raw point features (x, y, z in metres, intensity 0-255, sub-metre offsets), as PointPillars feeds them.
RANGES = torch.tensor([50.0, 50.0, 3.0, 255.0, 0.6, 0.6, 0.3, 0.4, 0.4])


def pfn_like(seed: int = 0) -> nn.Module:
    """Linear(9, 16) on raw point features -> ReLU -> Linear(16, 4); each feature contributes alike
    (weights ~ 1 / range, as a trained first layer has)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(9, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.div_(RANGES)
    return model.eval()


def point_batches(count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(256, 9, generator=generator) * 2 - 1) * RANGES for _ in range(count)]


def _relative_change(a: nn.Module, b: nn.Module, batches: list) -> float:
    with torch.no_grad():
        return max(float((a(x) - b(x)).abs().max() / b(x).abs().max()) for x in batches)


@pytest.mark.parametrize("which", ["pytorch-quantization", "modelopt"])
def test_smooth_keeps_fp32_and_cuts_the_first_layer_error(which) -> None:
    fp32, calib, held_out = pfn_like(), point_batches(4, 0), point_batches(3, 1)
    model = quantized(fp32, recipe(8, which, types=("Linear",)), calib)
    before = layer_mse(fp32, model, "0", held_out)
    record = ptq.run(model, [{"step": "smooth", "layers": ["0"], "batches": 2}], calib)[0]
    assert record["layers"] == 1 and record["smoothed"][0]["alpha"] is not None
    after = layer_mse(fp32, model, "0", held_out)  # measured here, on batches the step never saw
    assert after < 0.05 * before, (before, after)
    assert _relative_change(fp32_copy(model), fp32, calib + held_out) < 1e-5  # the FP32 function is unchanged
    inverse = input_scale.inverse_scale(backend.module_quantizer(model[0], "input"))
    assert inverse.shape == (9,) and float(inverse.max() / inverse.min()) > 10  # per input channel
    # the report's histogram: what the quantizer now sees (the runner hands the step max(batches, calibration.batches))
    stats = backend.calibration_statistics(backend.module_quantizer(model[0], "input"))
    assert float(stats["edges"][-1]) == pytest.approx(max(float((x * inverse).abs().max()) for x in calib[:2]), rel=1e-5)
    # range_search afterwards searches amax on the scaled input the quantizer sees, not the raw one (up to 255)
    top = max(float((x * inverse).abs().max()) for x in calib[:2])
    backend.set_amax(backend.module_quantizer(model[0], "input"), torch.tensor(100 * top))  # far too wide
    searched = ptq.run(model, [{"step": "range_search", "layers": ["0"], "batches": 2, "grid": 8}], calib)[0]
    assert searched["searched"][0]["amax"] <= 1.0001 * top


def test_smooth_conv_and_conv_transpose_layouts_keep_fp32() -> None:
    torch.manual_seed(0)
    fp32 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, stride=2)).eval()
    channel = torch.tensor([40.0, 1.0, 0.05]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        fp32[0].weight.div_(channel)
    generator = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 8, 8, generator=generator) * channel for _ in range(3)]
    model = quantized(fp32, recipe(8, types=("Conv2d", "ConvTranspose2d")), calib)
    before = layer_mse(fp32, model, "0", calib)
    record = ptq.run(model, [{"step": "smooth", "batches": 2}], calib)[0]
    assert [r["layer"] for r in record["smoothed"]] == ["0", "2"]
    assert record["smoothed"][0]["alpha"] is not None
    assert input_scale.inverse_scale(backend.module_quantizer(model[0], "input")).shape == (3, 1, 1)
    assert layer_mse(fp32, model, "0", calib) < 0.2 * before
    assert _relative_change(fp32_copy(model), fp32, calib) < 1e-5


def test_model_pt_round_trip_reproduces_the_smoothed_model(tmp_path) -> None:
    fp32, calib = pfn_like(), point_batches(3, 0)
    spec = recipe(8, types=("Linear",), ptq=[{"step": "smooth", "batches": 2}])
    model = quantized(fp32, spec, calib)
    ptq.run(model, spec["ptq"], calib)
    save_quantized(model, tmp_path / "model.pt", spec)
    loaded = re8.load_quantized(tmp_path / "model.pt", model=pfn_like())
    quantizer = backend.module_quantizer(loaded[0], "input")
    torch.testing.assert_close(input_scale.inverse_scale(quantizer),
                               input_scale.inverse_scale(backend.module_quantizer(model[0], "input")))
    with torch.no_grad():
        for x in point_batches(2, 5):
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert _relative_change(fp32_copy(loaded), fp32, calib) < 1e-5
    payload = torch.load(tmp_path / "model.pt", weights_only=True)  # a scale on a module that is no quantizer
    payload["state_dict"]["1." + input_scale.BUFFER] = payload["state_dict"].pop("0._input_quantizer." + input_scale.BUFFER)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(RecipeError, match=rf"bad.pt: 1.{input_scale.BUFFER}: .*'1', which is not a quantizer"):
        re8.load_quantized(tmp_path / "bad.pt", model=pfn_like())


def test_recipe_run_exports_the_scale_as_a_mul_and_verifies(tmp_path, write) -> None:
    """digits, every layer smoothed where it lowers the layer error: both onnx-qdq targets verify in onnxruntime."""
    path = write("r.yaml", f"""
        recipe: digits-smooth
        version: 1.0.0
        extends: {ROOT / "recipes" / "digits_int8.yaml"}
        export:
          - {{format: onnx-qdq, path: digits.onnx}}
          - {{format: onnx-qdq, path: digits_ort.onnx, target: onnxruntime}}
        ptq:
          - {{step: smooth, batches: 2, alpha: [0.3, 0.5, 0.7]}}
        """)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    smoothed = [r["layer"] for r in metrics["ptq"][0]["smoothed"] if r["alpha"] is not None]
    assert smoothed  # at least one layer took a scale
    assert [e["status"] for e in metrics["exports"]] == ["ok", "ok"]  # run in onnxruntime, compared with PyTorch
    for name in ("digits.onnx", "digits_ort.onnx"):
        graph = onnx.load(out / name).graph
        inits = {t.name for t in graph.initializer}
        readers = {i: n.op_type for n in graph.node for i in n.input}
        muls = [n for n in graph.node if n.op_type == "Mul" and any(i in inits for i in n.input)
                and readers.get(n.output[0]) == "QuantizeLinear"]
        assert len(muls) >= len(smoothed) or name == "digits_ort.onnx" and muls, name  # 1/s before the input Q
    model = re8.load_quantized(out / "model.pt", model=digits.build().eval())
    assert digits.evaluate(model, digits.val_data())["top1"] == metrics["int8"]["top1"]


def test_bad_settings_and_unsupported_layers_are_located_errors(write) -> None:
    path = write("r.yaml", f"""
        recipe: digits-smooth
        version: 1.0.0
        extends: {ROOT / "recipes" / "digits_int8.yaml"}
        export: []
        ptq:
          - {{step: smooth, alpha: [0.5, 1.5]}}
        """)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:6:20: ptq[0].alpha: alpha 1.5 is outside [0, 1]" in result.output and "ptq[0].alpha" in result.output and "outside [0, 1]" in result.output
    calib = sparse_batches(2)
    model = quantized(SparseNet(), recipe(8, types=("SubMConv3d",)), calib)
    with pytest.raises(RecipeError, match=r"ptq\[0\]\.layers: net\.0 is a spconv layer") as caught:
        ptq.run(model, [{"step": "smooth", "layers": ["net.0"]}], calib)
    assert "exclude" in caught.value.hint
    record = ptq.run(model, [{"step": "smooth"}], calib)[0]  # default selection: sparse layers are skipped, listed
    assert record["layers"] == 0 and [s["layer"] for s in record["skipped"]] == ["net.0", "net.2", "net.4"]


def test_pointpillars_pfn_layer_error_drops_and_its_export_verifies(tmp_path) -> None:
    """The zoo model's first layer (raw 9-feature point decoration, one per-tensor input scale), 2 calibration batches."""
    from recipe_engine.export.runner import run_exports
    from recipe_engine.zoo import pointpillars
    from tests.export.models import prepared_zoo_recipe

    loaded, model, batches, forward = prepared_zoo_recipe("pointpillars_int8", [
        "vars.calib_batches=2", "data.calibration.kwargs.count=8",
        "export=[{format: onnx-qdq, module: pillar_net.pfn, path: pfn.onnx, opset: 17},"
        " {format: onnx-qdq, module: pillar_net.pfn, path: pfn_ort.onnx, opset: 17, target: onnxruntime}]"])
    fp32 = pointpillars.build(pretrained=True).eval()
    reference = fp32_copy(model)
    held_out = pointpillars.val_data(count=8)[:1]
    before = layer_mse(reference, model, "pillar_net.pfn.0", held_out, forward)
    ptq.run(model, [{"step": "smooth", "layers": ["pillar_net.pfn.0"], "batches": 2}], batches, forward,
            calibration=loaded.spec.calibration, show_progress=False)
    after = layer_mse(reference, model, "pillar_net.pfn.0", held_out, forward)
    print(f"pfn.0 output MSE vs FP32: {before:.4g} -> {after:.4g}")
    assert after < 0.02 * before, (before, after)
    with torch.no_grad():
        out, ref = forward(fp32_copy(model), held_out[0]), forward(fp32, held_out[0])
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    results = run_exports(model, loaded, tmp_path, batches, forward)  # each run in onnxruntime, compared
    assert [r["status"] for r in results] == ["ok", "ok"], results
    for name in ("pfn.onnx", "pfn_ort.onnx"):
        graph = onnx.load(tmp_path / name).graph
        assert [n.op_type for n in graph.node[:2]] == ["Mul", "QuantizeLinear"], name  # 1/s on the raw features


def test_pointpillars_smooth_recipe_stays_within_half_a_point_in_pure_int8() -> None:
    """recipes/pointpillars_int8_smooth.yaml (its own ptq list), 4 calibration batches, 16 test scenes: no layer
    in full precision, and the plain recipe's ~11-point loss gone."""
    from recipe_engine import data as data_mod
    from recipe_engine.quant.apply import get_state
    from recipe_engine.zoo import pointpillars
    from tests.export.models import prepared_zoo_recipe

    loaded, model, batches, forward = prepared_zoo_recipe("pointpillars_int8_smooth",
                                                          ["vars.calib_batches=4", "export=[]"])
    assert all(backend.is_enabled(q) for _, q in get_state(model).unique())  # every quantizer on: pure INT8
    scenes = pointpillars.test_data(count=16)
    fp32 = pointpillars.evaluate(pointpillars.build(pretrained=True).eval(), scenes)["mAP"]
    plain = pointpillars.evaluate(model, scenes)["mAP"]
    records = ptq.run(model, loaded, data_mod.make_data(loaded, "calibration"), show_progress=False)
    assert [r["step"] for r in records] == ["smooth", "bias_correction"]
    smoothed = pointpillars.evaluate(model, scenes)["mAP"]
    print(f"16 test scenes: fp32 {fp32:.2f}, plain int8 {plain:.2f}, smooth recipe {smoothed:.2f}")
    assert fp32 - plain >= 2.0 and fp32 - smoothed <= 0.5
