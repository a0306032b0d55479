"""onnx-qdq exports: Q/DQ census, disabled quantizers, op sites, FP16, dynamic axes, onnxruntime accuracy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import recipe_engine
from recipe_engine.export import runner
from recipe_engine.export.runner import export
from recipe_engine.pipeline import as_loaded, prepare
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from recipe_engine.recipe.errors import RecipeError
from tests.export.models import build_dense, dense_batches, dense_recipe


def _prepared(recipe: dict):
    model = build_dense()
    batches = dense_batches()
    prepare(model, recipe, batches)
    return model, batches


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _scale(graph: onnx.GraphProto, node: onnx.NodeProto) -> np.ndarray:
    inits = {t.name: t for t in graph.initializer}
    return numpy_helper.to_array(inits[node.input[1]])


def _expected_quantize_nodes(model: torch.nn.Module, batch: torch.Tensor) -> int:
    """Enabled quantizer applications in one forward, counting a quantizer applied twice to the
    same tensor (shared quantizers, or two quantizers with one scale on one tensor) once."""
    seen: set[tuple] = set()
    keep: list[torch.Tensor] = []
    handles = []
    for _, quantizer in get_state(model).unique():
        def hook(module, args, output, quantizer=quantizer):
            if backend.is_enabled(quantizer):
                keep.append(args[0])
                seen.add((id(args[0]), tuple(backend.get_amax(quantizer).reshape(-1).tolist())))
        handles.append(quantizer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return len(seen)


def test_census_per_channel_axes_and_accuracy(tmp_path) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx"}])
    model, batches = _prepared(recipe)
    expected_q = _expected_quantize_nodes(model, batches[0])
    results = export(model, recipe, tmp_path, batches)
    (result,) = results
    proto = onnx.load(tmp_path / "net.onnx")
    onnx.checker.check_model(proto, full_check=True)
    graph = proto.graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") == expected_q == result["quantize_linear"]
    assert ops.count("DequantizeLinear") == expected_q
    # per-channel weights: Conv axis 0 ([O, I, k, k]), ConvTranspose axis 1 ([I, O, k, k])
    consumers = {name: n for n in graph.node for name in n.input}
    per_channel = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and _scale(graph, node).size > 1:
            axis = next(a.i for a in node.attribute if a.name == "axis")
            per_channel[consumers[node.output[0]].op_type, axis] = per_channel.get(
                (consumers[node.output[0]].op_type, axis), 0) + 1
    assert per_channel == {("Conv", 0): 5, ("ConvTranspose", 1): 1}
    weights = [n for n, q in get_state(model).quantizers.items() if n.endswith(".weight")]
    assert sum(per_channel.values()) == len(weights)
    # accuracy vs PyTorch, in output quantization steps
    assert result["status"] == "ok" and result["max_diff_steps"] <= 1.0
    assert 0 <= result["frac_over_1_step"] <= 0.01 and result["max_abs_diff"] < 0.05
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["recipe"] == "test-dense" and meta["version"] == "1.2.3"
    assert meta["sha256"] == as_loaded(recipe).sha256
    json.dumps(results)  # metrics.json-ready


def test_op_sites_have_one_scale_per_site(tmp_path) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx"}])
    model, batches = _prepared(recipe)
    export(model, recipe, tmp_path, batches)
    graph = onnx.load(tmp_path / "net.onnx").graph
    producers = _producers(graph)
    state = get_state(model)
    for op_type, site in (("Concat", "merge.cat0"), ("Add", "block.add0")):
        (node,) = [n for n in graph.node if n.op_type == op_type]
        dqs = [producers[name] for name in node.input]
        assert [d.op_type for d in dqs] == ["DequantizeLinear", "DequantizeLinear"], site
        amax = float(backend.get_amax(state.quantizers[site]))
        for dq in dqs:
            assert np.allclose(_scale(graph, dq), amax / 127, rtol=1e-6)


def test_shared_quantizers_on_one_tensor_give_one_qdq(tmp_path) -> None:
    plain = dense_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx"}])
    shared = dense_recipe(share=[["block.conv1.input", "block.add0"]], export=plain["export"])
    counts = []
    for recipe, out in ((plain, tmp_path / "plain"), (shared, tmp_path / "shared")):
        model, batches = _prepared(recipe)
        (result,) = export(model, recipe, out, batches)
        assert result["quantize_linear"] == _expected_quantize_nodes(model, batches[0])
        counts.append(result["quantize_linear"])
    assert counts[1] == counts[0] - 1  # the block input is quantized once for conv1 and the add
    graph = onnx.load(tmp_path / "shared" / "net.onnx").graph
    producers = _producers(graph)
    (add,) = [n for n in graph.node if n.op_type == "Add"]
    conv1 = next(n for n in graph.node if n.op_type == "Conv" and n.input[1].startswith("/block/conv1/"))
    assert conv1.input[0] in add.input and producers[conv1.input[0]].op_type == "DequantizeLinear"


def test_disabled_quantizers_leave_no_qdq(tmp_path) -> None:
    recipe = dense_recipe(disable=["merge.head", "block.add0"],
                          export=[{"format": "onnx-qdq", "path": "net.onnx"}])
    model, batches = _prepared(recipe)
    expected_q = _expected_quantize_nodes(model, batches[0])
    (result,) = export(model, recipe, tmp_path, batches)
    graph = onnx.load(tmp_path / "net.onnx").graph
    producers = _producers(graph)
    assert result["quantize_linear"] == expected_q
    head = [n for n in graph.node if n.op_type == "Conv" and n.input[1] == "merge.head.weight"]
    assert len(head) == 1 and producers[head[0].input[0]].op_type == "Concat"
    (add,) = [n for n in graph.node if n.op_type == "Add"]
    assert all(producers[i].op_type != "DequantizeLinear" for i in add.input)
    # and nothing left for them: the weight goes straight from the initializer into the Conv
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "merge.head.weight" for n in graph.node)


@pytest.mark.parametrize("opset", [17, 19])
def test_fp16_graph(tmp_path, opset: int) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx", "fp16": True, "opset": opset}])
    model, batches = _prepared(recipe)
    (result,) = export(model, recipe, tmp_path, batches)
    proto = onnx.load(tmp_path / "net.onnx")
    onnx.checker.check_model(proto, full_check=True)
    graph = proto.graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    inits = {t.name: t for t in graph.initializer}
    scales = {inits[n.input[1]].data_type for n in graph.node if n.op_type == "QuantizeLinear"}
    assert scales == {onnx.TensorProto.FLOAT}  # Q/DQ compute in float32 between Casts: scales stay exact
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert casts and all(n.op_type == "QuantizeLinear" for c in casts for n in graph.node if c.output[0] in n.input
                         and next(a.i for a in c.attribute if a.name == "to") == onnx.TensorProto.FLOAT)
    assert inits["merge.head.bias"].data_type == onnx.TensorProto.FLOAT16
    assert result["fp16"] is True and result["max_diff_steps"] <= 4.0 and result["frac_over_1_step"] <= 0.05


def test_dynamic_axes_and_captured_submodule_inputs(tmp_path) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "merge.onnx", "module": "merge",
                                   "dynamic_axes": {"x": {0: "batch"}, "output": {0: "batch"}}}])
    model, batches = _prepared(recipe)
    (result,) = export(model, recipe, tmp_path, batches)
    assert result["inputs"] == {"x": [2, 8, 8, 8]} and result["module"] == "merge"
    proto = onnx.load(tmp_path / "merge.onnx")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # the exported module got exactly what it received on the first calibration batch
    with torch.no_grad():
        x = model.block(model.stem(batches[0]))
        expected = model.merge(x[:1]).numpy()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x[:1].numpy()})  # batch 1 works: the axis is dynamic
    assert np.abs(out - expected).max() <= result["outputs"][0]["output_step"]


def test_unknown_dynamic_axis_name_is_an_error(tmp_path) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "m.onnx", "module": "merge",
                                   "dynamic_axes": {"images": {0: "batch"}}}])
    model, batches = _prepared(recipe)
    with pytest.raises(RecipeError, match=r"(?s)dynamic_axes names \['images'\].*inputs: x"):
        export(model, recipe, tmp_path, batches)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_tensorrt_is_skipped_without_gpu(tmp_path) -> None:
    entries = [{"format": "onnx-qdq", "path": "net.onnx", "dynamic_axes": {"x": {0: "batch"}}},
               {"format": "tensorrt", "path": "net.engine", "source": "net.onnx"}]
    recipe = dense_recipe(export=entries)
    model, batches = _prepared(recipe)
    qdq, engine = export(model, recipe, tmp_path, batches)
    assert engine["status"] == "skipped" and "skipped:" in engine["reason"]
    assert engine["trtexec"].startswith("trtexec --onnx=net.onnx --saveEngine=net.engine --int8 --fp16")
    assert "--minShapes=x:1x3x8x8" in engine["trtexec"] and "--maxShapes=x:2x3x8x8" in engine["trtexec"]
    assert not (tmp_path / "net.engine").exists()
    required = dense_recipe(export=[entries[0], {**entries[1], "required": True}])
    with pytest.raises(RecipeError, match="tensorrt: cannot build the engine"):
        export(model, required, tmp_path, batches)


def test_margin_failure_is_a_clear_error(tmp_path, monkeypatch) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx", "margin_db": 0.0}])
    model, batches = _prepared(recipe)
    real = runner.run_onnxruntime
    monkeypatch.setattr(runner, "run_onnxruntime", lambda *a, **k: [o * 1.05 for o in real(*a, **k)])
    with pytest.raises(RecipeError, match=r"export\[0\]: net\.onnx: onnxruntime is not faithful .* below PyTorch"):
        export(model, recipe, tmp_path, batches)
    assert not (tmp_path / "net.onnx").exists()  # nothing half-verified is left behind


def test_package_is_callable(tmp_path) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx"}])
    model, batches = _prepared(recipe)
    results = recipe_engine.export(model, recipe, tmp_path, batches)
    assert results[0]["path"] == "net.onnx" and (tmp_path / "net.onnx").is_file()
    again = export(model, recipe, tmp_path / "again", batches)  # a second export in the same process
    assert (tmp_path / "again" / "net.onnx").read_bytes() == (tmp_path / "net.onnx").read_bytes()
    assert again[0]["file_sha256"] == results[0]["file_sha256"]
