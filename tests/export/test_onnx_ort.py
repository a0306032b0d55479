"""``onnx-qdq`` with ``target: onnxruntime``: integer kernels in onnxruntime, judged against FP32."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from recipe_engine.export.onnx_ort import place_for_onnxruntime
from recipe_engine.export.onnx_qdq import export_qdq
from recipe_engine.export.ort_verify import check_against_fp32, fused_ops
from recipe_engine.export.quantizers import quantizers_off
from recipe_engine.export.runner import export
from recipe_engine.export.verify import run_onnxruntime
from recipe_engine.quant.apply import get_state
from recipe_engine.recipe.errors import RecipeError
from recipe_engine.recipe.loader import load_recipe
from tests.conftest import RECIPES
from tests.export.models import prepared_zoo_recipe as _prepared


def test_digits_runs_integer_kernels_and_keeps_fp32_fidelity(tmp_path) -> None:
    loaded, model, batches, forward = _prepared("digits_int8", [
        "calibration.batches=2",
        "export=[{format: onnx-qdq, path: trt.onnx}, {format: onnx-qdq, path: ort.onnx, target: onnxruntime,"
        " dynamic_axes: {x: {0: batch}}}]"])
    trt, ort = export(model, loaded, tmp_path, batches, forward)
    assert trt["target"] == "tensorrt" and "onnxruntime" not in trt
    assert ort["status"] == "ok" and ort["target"] == "onnxruntime" and ort["judged_against"] == "fp32"
    kernels = ort["onnxruntime"]["kernels"]
    assert kernels["QLinearConv"] == 6 and kernels["QLinearAdd"] == 1 and "Conv" not in kernels  # no float conv
    assert ort["onnxruntime"]["int8_weights"] == 7 and ort["onnxruntime"]["int32_biases"] == 7
    assert ort["onnxruntime"]["float_output_layers"] == 0  # fc: QGemm with a float output
    assert ort["onnxruntime"]["activations"] == {"uint8_zero_point_0": 7, "uint8_zero_point_128": 4}
    # finer uint8 steps after ReLU: at least as close to FP32 as the fake-quant model (and the TensorRT file)
    assert ort["sqnr_runtime_db"] >= ort["sqnr_pytorch_db"] and ort["sqnr_runtime_db"] >= trt["sqnr_runtime_db"]
    assert ort["systematic_vs_fp32_db"] <= -10
    graph = onnx.load(tmp_path / "ort.onnx").graph
    zero_points = {numpy_helper.to_array(t).dtype for t in graph.initializer if "act_zero_point" in t.name}
    assert zero_points == {np.dtype(np.uint8)}
    assert {p.key: p.value for p in onnx.load(tmp_path / "ort.onnx").metadata_props}["target"] == "onnxruntime"


def test_centerpoint_bev_upsampling_becomes_integer(tmp_path) -> None:
    loaded, model, batches, forward = _prepared("centerpoint_int8", [
        "data.calibration.kwargs.count=2", "data.calibration.kwargs.batch_size=2", "calibration.batches=1",
        "calibration.method=max", "export=[{format: onnx-qdq, module: bev, path: bev.onnx, target: onnxruntime}]"])
    (bev,) = export(model, loaded, tmp_path, batches, forward)
    placed = bev["onnxruntime"]
    assert placed["conv_transpose_as_depth_to_space"] == 2 and placed["float_output_layers"] == 1
    assert placed["kept_float"] == [] and placed["padded_input_channels"] == []  # no thin layer in a BEV part
    # every conv but the float-output head conv (no range for the graph output) is an integer kernel
    assert placed["kernels"]["QLinearConv"] == 10 and placed["kernels"].get("Conv", 0) == 1
    assert "ConvTranspose" not in placed["kernels"] and placed["kernels"]["QLinearConcat"] == 1
    assert bev["sqnr_runtime_db"] >= bev["sqnr_pytorch_db"]
    # no node whose output nothing reads (the float head conv's weight DequantizeLinear went with its weight:
    # onnxruntime keeps such a node and runs it on every call)
    graph = onnx.load(tmp_path / "bev.onnx").graph
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    assert [n.name for n in graph.node if not any(o in read for o in n.output)] == []
    assert placed["kernels"].get("DequantizeLinear", 0) == 1  # the head conv's input only


def _digits_placed():
    loaded, model, batches, forward = _prepared("digits_int8", ["calibration.batches=2", "export=[]"])
    x = batches[0]["image"]
    qdq = export_qdq(model, (x,), {}).model
    placed = copy.deepcopy(qdq)
    place_for_onnxruntime(placed)
    import torch

    with torch.no_grad():
        pytorch = [model(x)]
        with quantizers_off(get_state(model)):
            fp32 = [model(x)]
    return placed, {"x": x.numpy()}, pytorch, fp32


@pytest.mark.parametrize("damage", ["weight_scale", "activation_zero_point", "bias"])
def test_a_wrong_scale_zero_point_or_bias_fails_verification(damage: str) -> None:
    placed, feeds, pytorch, fp32 = _digits_placed()
    good = run_onnxruntime(placed.SerializeToString(), feeds, optimization="all")
    check_against_fp32(good, pytorch, fp32, ["output"], 0.5)  # the intact file passes
    inits = {t.name: t for t in placed.graph.initializer}

    def edit(predicate, change) -> None:
        name = next(n for n in inits if predicate(n))
        array = change(numpy_helper.to_array(inits[name]).copy())
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    if damage == "weight_scale":  # one layer's weights read 30% too large
        edit(lambda n: "block1/conv2/_weight_quantizer/Constant_output_0" in n, lambda a: a * np.float32(1.3))
    elif damage == "activation_zero_point":  # one DequantizeLinear reads a ReLU output with its zero point 8 off
        dq = next(n for n in placed.graph.node if n.op_type == "DequantizeLinear" and "act_zero_point" in n.input[2]
                  and int(numpy_helper.to_array(inits[n.input[2]])) == 0)
        placed.graph.initializer.append(numpy_helper.from_array(np.array(8, np.uint8), "wrong_zero_point"))
        dq.input[2] = "wrong_zero_point"
    else:  # biases 10x
        edit(lambda n: "bias_int32" in n, lambda a: a * 10)
    bad = run_onnxruntime(placed.SerializeToString(), feeds, optimization="all")
    with pytest.raises(RecipeError, match="not faithful to FP32"):
        check_against_fp32(bad, pytorch, fp32, ["output"], 0.5)


def test_fp16_and_tensorrt_from_an_onnxruntime_file_are_refused(tmp_path) -> None:
    loaded, model, batches, forward = _prepared("digits_int8", [
        "calibration.batches=1", "export=[{format: onnx-qdq, path: o.onnx, target: onnxruntime, fp16: true}]"])
    with pytest.raises(RecipeError, match="fp16: true does not apply"):
        export(model, loaded, tmp_path, batches, forward)
    loaded = load_recipe(RECIPES / "digits_int8.yaml", overrides=[
        "export=[{format: onnx-qdq, path: o.onnx, target: onnxruntime}, {format: tensorrt, source: o.onnx, "
        "path: o.engine}]"])
    with pytest.raises(RecipeError, match="placed for onnxruntime"):
        export(model, loaded, tmp_path, batches, forward)


def test_fused_ops_counts_what_onnxruntime_built() -> None:
    placed, feeds, _, _ = _digits_placed()
    assert fused_ops(placed.SerializeToString())["QLinearConv"] == 6


def test_output_ranges_make_the_head_conv_an_integer_kernel() -> None:
    import torch

    loaded, model, batches, forward = _prepared("centerpoint_int8", [
        "data.calibration.kwargs.count=2", "data.calibration.kwargs.batch_size=2", "calibration.batches=1",
        "calibration.method=max", "export=[]"])
    seen = []
    handle = model.bev.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        forward(model, batches[0])
    handle.remove()
    x = seen[0]
    qdq = export_qdq(model.bev, (x,), {}).model
    with torch.no_grad():
        pytorch = [model.bev(x)]
        with quantizers_off(get_state(model)):
            fp32 = [model.bev(x)]
    out = qdq.graph.output[0].name
    ranged = copy.deepcopy(qdq)
    summary = place_for_onnxruntime(ranged, output_ranges={out: (float(pytorch[0].min()), float(pytorch[0].max())),
                                                           "not_an_output": (0.0, 1.0)})
    assert summary["quantized_outputs"] == 1 and summary["float_output_layers"] == 0
    kernels = fused_ops(ranged.SerializeToString())
    assert kernels["QLinearConv"] == 11 and "Conv" not in kernels  # the head conv too
    (runtime,) = run_onnxruntime(ranged.SerializeToString(), {qdq.graph.input[0].name: x.numpy()}, optimization="all")
    step = (float(pytorch[0].max()) - min(float(pytorch[0].min()), 0.0)) / 255
    default = copy.deepcopy(qdq)
    place_for_onnxruntime(default)
    (plain,) = run_onnxruntime(default.SerializeToString(), {qdq.graph.input[0].name: x.numpy()}, optimization="all")
    # the output on a uint8 grid of the calibrated range: within one step of the float-head file's output
    assert np.abs(runtime - plain).max() <= 1.01 * step and np.abs(runtime - plain).max() > 0
    check_against_fp32([runtime], pytorch, fp32, ["output"], 1.0)
