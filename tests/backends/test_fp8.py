"""FP8 (E4M3) dense quantizers on the modelopt backend, exported as standard opset-19 FLOAT8E4M3FN Q/DQ."""

from __future__ import annotations

import onnx
import pytest
import torch

pytest.importorskip("modelopt.torch.quantization")

from recipe_engine.export.runner import export  # noqa: E402
from recipe_engine.pipeline import prepare  # noqa: E402
from recipe_engine.quant import backend  # noqa: E402
from recipe_engine.quant.apply import get_state  # noqa: E402
from recipe_engine.recipe import RecipeError  # noqa: E402
from tests.helpers import build_dense, dense_batches  # noqa: E402


def fp8_recipe(**extra) -> dict:
    return {
        "recipe": "fp8", "version": "1.0.0", "backend": "modelopt",
        "quantizers": {"fp8": {"format": "fp8_e4m3"}, "int8": {"calibrator": "histogram"}},
        "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "fp8", "weight": "fp8"}},
                  {"select": "head", "quantize": {"input": "int8"}}],
        "calibration": {"method": "mse"},
        "export": [{"format": "onnx-qdq", "path": "net.onnx", "opset": 19}],
        **extra,
    }


def test_fp8_quantizers_fake_quantize_on_the_e4m3_grid() -> None:
    model, batches = build_dense(), dense_batches()
    prepare(model, fp8_recipe(), batches)
    state = get_state(model)
    quantizer = state.quantizers["stem.0.input"]
    assert backend.describe(quantizer)["format"] == "fp8_e4m3"
    amax = float(backend.get_amax(quantizer))
    x = torch.linspace(-amax, amax, 1001)
    y = quantizer(x)
    scale = 448.0 / amax  # E4M3 max is 448
    grid = (y * scale).to(torch.float8_e4m3fn).float() / scale
    torch.testing.assert_close(y, grid, rtol=1e-6, atol=0.0)  # every output is an E4M3 value (scaled)
    assert 0 < len(torch.unique(y)) <= 253  # finite E4M3 codes
    assert backend.describe(state.quantizers["head.input"])["format"] == "int"


def test_fp8_export_is_standard_qdq_checked_in_onnxruntime(tmp_path) -> None:
    recipe = fp8_recipe()
    model, batches = build_dense(), dense_batches()
    prepare(model, recipe, batches)
    (result,) = export(model, recipe, tmp_path, batches)
    proto = onnx.load(tmp_path / "net.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert not [n for n in proto.graph.node if n.domain == "trt"]
    inits = {t.name: t for t in proto.graph.initializer}
    zero_types = {inits[n.input[2]].data_type for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert zero_types == {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT8}  # FP8 layers + the INT8 head
    assert result["status"] == "ok", result
    assert result["max_diff_steps"] <= 4.0
    print(f"fp8 tiny net: onnxruntime vs PyTorch max {result['max_diff_steps']} steps, rel {result['rel_error']}")


def test_fp8_export_below_opset_19_is_a_located_error(tmp_path) -> None:
    recipe = fp8_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx"}])
    model, batches = build_dense(), dense_batches()
    prepare(model, recipe, batches)
    with pytest.raises(RecipeError, match=r"export\[0\].*opset >= 19") as info:
        export(model, recipe, tmp_path, batches)
    assert "hint: set `opset: 19`" in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"backend": "pytorch-quantization"}, "needs the modelopt backend"),
    ({"quantizers": {"fp8": {"format": "fp8_e4m3", "per_channel": True}, "int8": {}}}, "per tensor"),
    ({"quantizers": {"fp8": {"format": "fp8_e4m3", "calibrator": "histogram"}, "int8": {}}}, "calibrated by max"),
])
def test_fp8_misuse_is_refused(change, message) -> None:
    with pytest.raises(RecipeError, match=message):
        prepare(build_dense(), fp8_recipe(**change), dense_batches())
