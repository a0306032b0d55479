"""``target: onnxruntime`` thin layers (:mod:`recipe_engine.export.ort_thin`): float where onnxruntime runs them
faster in float, padded input channels otherwise, and the integer kernels everywhere else."""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from recipe_engine.export.onnx_ort import place_for_onnxruntime
from recipe_engine.export.onnx_qdq import export_qdq
from recipe_engine.export.ort_thin import THIN_K
from recipe_engine.export.ort_verify import fused_ops
from recipe_engine.export.runner import export
from recipe_engine.export.verify import run_onnxruntime
from tests.export.models import prepared_zoo_recipe as _prepared

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- synthetic engine-style Q/DQ graphs
class _Builder:
    """Engine-style Q/DQ graphs (int8 symmetric activations and per-channel weights, as ``onnx-qdq`` writes)."""

    def __init__(self) -> None:
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, value) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(self, x: str, amax: float = 4.0) -> str:
        scale, zero = self.const(np.float32(amax / 127)), self.const(np.int8(0))
        q, dq = self.name("q"), self.name("dq")
        self.nodes += [helper.make_node("QuantizeLinear", [x, scale, zero], [q]),
                       helper.make_node("DequantizeLinear", [q, scale, zero], [dq])]
        return dq

    def conv(self, x: str, c_in: int, c_out: int, k: int, name: str, stride: int = 1) -> str:
        w = RNG.standard_normal((c_out, c_in, k, k)).astype(np.float32) * 0.2
        scale, zero = self.const((np.abs(w).max((1, 2, 3)) / 127).astype(np.float32)), self.const(np.zeros(c_out, np.int8))
        wq, wdq, out = self.name("wq"), self.name("wdq"), self.name("conv")
        self.nodes += [helper.make_node("QuantizeLinear", [self.const(w), scale, zero], [wq], axis=0),
                       helper.make_node("DequantizeLinear", [wq, scale, zero], [wdq], axis=0),
                       helper.make_node("Conv", [self.qdq(x), wdq, self.const(np.zeros(c_out, np.float32))], [out],
                                        name=name, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2)]
        return out

    def op(self, op_type: str, inputs: list[str], name: str = "", **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name or out, **attrs))
        return out

    def model(self, c_in: int, outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["batch", c_in, 32, 32])],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["b", "c", "h", "w"]) for o in outputs],
                                  self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _stem(c_in: int, k: int, readers: int) -> onnx.ModelProto:
    """x -> stem conv -> Relu -> MaxPool -> ``readers`` quantized convs -> outputs."""
    b = _Builder()
    pooled = b.op("MaxPool", [b.op("Relu", [b.conv("x", c_in, 16, k, "stem")])], "pool", kernel_shape=[2, 2],
                  strides=[2, 2])
    outputs = [b.qdq(b.conv(pooled, 16, 16, 3, f"reader{i}")) for i in range(readers)]  # integer outputs
    return b.model(c_in, outputs)


def _placed(model: onnx.ModelProto, placement: str = "auto") -> tuple[onnx.ModelProto, dict]:
    placed = copy.deepcopy(model)
    return placed, place_for_onnxruntime(placed, placement=placement)


def _optimised(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp, "o.onnx"))
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(Path(tmp, "o.onnx")))


def test_a_thin_stem_before_a_pool_read_by_two_convs_stays_float_with_its_pool() -> None:
    placed, summary = _placed(_stem(3, 5, readers=2))
    (kept,) = summary["kept_float"]
    assert kept["layer"] == "stem" and kept["ops"][0] == "stem" and kept["ops"][-1] == "pool"
    assert "K=75" in kept["reason"] and summary["quantizers_per_reader"] == 1
    graph = placed.graph
    stem = next(n for n in graph.node if n.name == "stem")
    inits = {t.name for t in graph.initializer}
    assert stem.input[0] == "x" and stem.input[1] in inits  # float input, FP32 weights: no Q/DQ left
    producer = {o: n.op_type for n in graph.node for o in n.output}
    pool = next(n for n in graph.node if n.name == "pool")
    assert producer[pool.input[0]] == "Relu"  # no Q moved above the pool
    assert sum(n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0] for n in graph.node) == 2
    optimised = _optimised(placed)
    # onnxruntime runs the pool float (NCHWc), not as a uint8 NCHW max-pool; both readers are integer convs
    assert [n.domain for n in optimised.graph.node if n.op_type == "MaxPool"] == ["com.microsoft.nchwc"]
    assert sum(n.op_type == "QLinearConv" for n in optimised.graph.node) == 2


@pytest.mark.parametrize(("c_in", "k", "readers", "why"), [
    (3, 7, 2, "K=147 >= THIN_K: the integer conv is the faster one"),
    (3, 5, 1, "one reader: onnxruntime would move its only Q above the pool"),
])
def test_the_stem_stays_integer_outside_the_rule(c_in: int, k: int, readers: int, why: str) -> None:
    assert c_in * k * k < THIN_K or k == 7
    placed, summary = _placed(_stem(c_in, k, readers))
    assert summary["kept_float"] == [], why
    kernels = fused_ops(placed.SerializeToString())
    assert kernels["QLinearConv"] == 1 + readers  # the stem too
    padded = [e["layer"] for e in summary["padded_input_channels"]]
    assert padded == ([] if k == 7 else ["stem"])  # padding only below THIN_K


def test_padded_channels_compute_the_same_integers() -> None:
    """A 1-channel stem read by an add (as the digits stem): integer, its input padded to 4 channels."""
    b = _Builder()
    stem = b.op("Relu", [b.conv("x", 1, 16, 3, "stem")])
    out = b.op("Add", [b.qdq(b.conv(stem, 16, 16, 3, "conv")), b.qdq(stem)])
    model = b.model(1, [b.op("Relu", [out])])
    auto, summary = _placed(model)
    integer, before = _placed(model, "integer")
    assert summary["kept_float"] == [] and summary["padded_input_channels"] == [{"layer": "stem", "channels": [1, 4]}]
    assert before["padded_input_channels"] == []
    assert [n.op_type for n in auto.graph.node].count("Pad") == 1
    feeds = {"x": RNG.standard_normal((2, 1, 32, 32)).astype(np.float32)}
    (a,), (i,) = (run_onnxruntime(m.SerializeToString(), feeds, optimization="all") for m in (auto, integer))
    np.testing.assert_array_equal(a, i)  # zero weights on the padded channels: the same integers
    assert fused_ops(auto.SerializeToString())["QLinearConv"] == 2


def test_a_thin_layer_from_input_to_output_is_exported_float() -> None:
    """The PointPillars PFN shape: one 9-feature Gemm + Relu, graph input to graph output."""
    b = _Builder()
    w = RNG.standard_normal((64, 9)).astype(np.float32)
    scale, zero = b.const((np.abs(w).max(1) / 127).astype(np.float32)), b.const(np.zeros(64, np.int8))
    b.nodes += [helper.make_node("QuantizeLinear", [b.const(w), scale, zero], ["wq"], axis=0),
                helper.make_node("DequantizeLinear", ["wq", scale, zero], ["wdq"], axis=0),
                helper.make_node("Gemm", [b.qdq("x"), "wdq", b.const(np.zeros(64, np.float32))], ["g"], name="pfn",
                                 transB=1),
                helper.make_node("Relu", ["g"], ["out"], name="relu")]
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 9])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 64])], b.inits)
    placed, summary = _placed(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [e["ops"] for e in summary["kept_float"]] == [["pfn", "relu"]]
    assert {n.op_type for n in placed.graph.node} == {"Gemm", "Relu"}  # no Q/DQ left at all
    x = RNG.standard_normal((128, 9)).astype(np.float32)
    (out,) = run_onnxruntime(placed.SerializeToString(), {"x": x}, optimization="all")
    np.testing.assert_allclose(out, np.maximum(x @ w.T, 0), rtol=1e-5, atol=1e-5)  # the FP32 layer


# ----------------------------------------------------------------------------- zoo parts through the export entry
def test_bevfusion_camera_stem_is_float_and_verified(tmp_path) -> None:
    loaded, model, batches, forward = _prepared("bevfusion_int8", [
        "data.calibration.kwargs.count=1", "data.calibration.kwargs.batch_size=1", "calibration.batches=1",
        "calibration.method=max", "export=[{format: onnx-qdq, module: camera, path: camera.onnx, target: onnxruntime}]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (camera,) = export(model, loaded, tmp_path, batches, forward)
    assert camera["status"] == "ok" and camera["judged_against"] == "fp32"
    placed = camera["onnxruntime"]
    assert [e["ops"] for e in placed["kept_float"]] == [["/backbone/conv1/Conv", "/backbone/relu/Relu",
                                                         "/backbone/maxpool/MaxPool"]]
    assert any("/backbone/conv1/Conv" in str(w.message) and "kept float" in str(w.message) for w in caught)
    assert any(n.startswith("onnxruntime placement: /backbone/conv1/Conv") for n in camera["notes"])
    # every other conv an integer kernel; float: the stem and the output conv (no range for the graph output)
    assert placed["kernels"]["QLinearConv"] == 22 and placed["kernels"].get("Conv", 0) == 2
    assert "NhwcMaxPool" not in placed["kernels"]  # the stem's pool runs float (NCHWc)
    # the float stem is closer to FP32 than the fake-quant model's integer one
    assert camera["sqnr_runtime_db"] >= camera["sqnr_pytorch_db"]
    meta = {p.key: p.value for p in onnx.load(tmp_path / "camera.onnx").metadata_props}
    assert meta["sha256"] == loaded.sha256 and meta["target"] == "onnxruntime"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (again,) = export(model, loaded, tmp_path / "again", batches, forward)
    assert again["file_sha256"] == camera["file_sha256"]  # a static rule: the same file every time


def test_digits_stem_is_padded_not_float(tmp_path) -> None:
    loaded, model, batches, forward = _prepared("digits_int8", ["calibration.batches=1", "export=[]"])
    x = batches[0]["image"]
    qdq = export_qdq(model, (x,), {}).model
    auto, summary = _placed(qdq)
    integer, _ = _placed(qdq, "integer")
    assert summary["kept_float"] == []  # its output feeds block1's add: float would drag the pool into NCHW
    assert summary["padded_input_channels"] == [{"layer": "/stem/stem.0/Conv", "channels": [1, 4]}]
    feeds = {qdq.graph.input[0].name: x.numpy()}
    (a,), (i,) = (run_onnxruntime(m.SerializeToString(), feeds, optimization="all") for m in (auto, integer))
    np.testing.assert_array_equal(a, i)
    assert fused_ops(auto.SerializeToString())["QLinearConv"] == 6
