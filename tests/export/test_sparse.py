"""onnx-sparse exports against the libspconv format document, and the reference executor against PyTorch."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import AttributeProto as A
from onnx import numpy_helper

from recipe_engine.export.runner import export
from recipe_engine.export.scn_runtime import fake_quant, run_scn
from recipe_engine.pipeline import as_loaded, prepare
from recipe_engine.quant import backend, sparse
from recipe_engine.quant.apply import get_state
from tests.export.models import build_sparse, forward_batch, sparse_recipe, voxel_batches

# The attribute table of the format document (written out here, independently of the exporter).
CONV_TYPES = {"activation": A.STRING, "kernel_size": A.INTS, "stride": A.INTS, "padding": A.INTS,
              "dilation": A.INTS, "subm": A.INT, "inverse": A.INT, "rulebook": A.STRING, "output_bound": A.INT,
              "precision": A.STRING, "output_precision": A.STRING}
INT8_TYPES = {"input_dynamic_range": A.FLOAT, "weight_dynamic_ranges": A.FLOATS}
INFO_TYPES = {"ndim": A.INT, "input_spatial_shape": A.INTS, "output_spatial_shape": A.INTS, "in_channels": A.INT,
              "out_channels": A.INT, "transposed": A.INT, "output_padding": A.INTS, "groups": A.INT,
              "input_shape": A.INTS, "output_shape": A.INTS}
ADD_TYPES = {"precision": A.STRING, "output_precision": A.STRING}
SCATTER_TYPES = {"input_spatial_shape": A.INTS, "format": A.STRING, "output_shape": A.INTS}


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Exported:
    """A prepared TinyDetector and its onnx-sparse exports in both layouts."""

    def __init__(self, layout: str, out_dir):
        self.layout = layout
        self.other = "xyz" if layout == "zyx" else "zyx"
        self.recipe = sparse_recipe(export=[
            {"format": "onnx-sparse", "module": "encoder", "path": "native.onnx", "layout": layout},
            {"format": "onnx-sparse", "module": "encoder", "path": "converted.onnx", "layout": self.other,
             "source_layout": layout}])
        self.model = build_sparse(layout)
        self.batches = voxel_batches(layout)
        prepare(self.model, self.recipe, self.batches, forward_batch)
        self.out = out_dir
        self.results = export(self.model, self.recipe, out_dir, self.batches, forward_batch)
        self.native = onnx.load(out_dir / "native.onnx")
        self.converted = onnx.load(out_dir / "converted.onnx")


@pytest.fixture(scope="module", params=["zyx", "xyz"])
def exported(request, tmp_path_factory) -> Exported:
    return Exported(request.param, tmp_path_factory.mktemp(f"sparse_{request.param}"))


def test_attribute_census(exported: Exported) -> None:
    for proto in (exported.native, exported.converted):
        graph = proto.graph
        assert graph.name == "scn" and [(o.domain, o.version) for o in proto.opset_import] == [("", 11)]
        assert [i.name for i in graph.input] == ["0"]
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for o in graph.output)
        assert {n.op_type for n in graph.node} <= {"SparseConvolution", "Add", "Relu", "ScatterDense", "Reshape",
                                                   "Transpose"}
        assert all(n.domain == "" for n in graph.node)
        # names: tensors "0", "1", ... in production order; unique nodes and initializers
        produced = [o for n in graph.node for o in n.output]
        assert ["0", *produced] == [str(i) for i in range(len(produced) + 1)]
        assert len({n.name for n in graph.node}) == len(graph.node)
        inits = {t.name: t for t in graph.initializer}
        assert len(inits) == len(graph.initializer)
        for tensor in graph.initializer:
            assert tensor.data_type == onnx.TensorProto.FLOAT16
            assert len(tensor.raw_data) == int(np.prod(tensor.dims)) * 2
        producers = {o: n for n in graph.node for o in n.output}
        convs = [n for n in graph.node if n.op_type == "SparseConvolution"]
        assert len(convs) == 6
        for k, node in enumerate(convs):
            a = {x.name: x for x in node.attribute}
            for name, kind in {**CONV_TYPES, **INFO_TYPES}.items():
                assert a[name].type == kind, (node.name, name)
            values = attrs(node)
            assert node.input[1:] == [f"spconv{k}.weight", f"spconv{k}.bias"]  # bias always present
            weight, bias = inits[node.input[1]], inits[node.input[2]]
            out_c, in_c = values["out_channels"], values["in_channels"]
            assert list(weight.dims) == [out_c, *values["kernel_size"], in_c] and list(bias.dims) == [out_c]
            assert text(values["activation"]) in ("ReLU", "None")
            # every layer carries its ranges (the fp16 stem too: calibrated, then disabled), as NVIDIA writes them
            for name, kind in INT8_TYPES.items():
                assert a[name].type == kind
            assert len(values["weight_dynamic_ranges"]) == out_c
            assert all(math.isfinite(r) and r > 0 for r in values["weight_dynamic_ranges"])
        for node in graph.node:
            values = attrs(node)
            if node.op_type == "Add":
                assert {x.name: x.type for x in node.attribute}.items() >= ADD_TYPES.items()
                precisions = []
                for name in node.input:
                    source = producers[name]
                    while source.op_type == "Relu":
                        source = producers[source.input[0]]
                    precisions.append(text(attrs(source)["output_precision"]))
                assert precisions[0] == precisions[1], node.name
            if node.op_type == "ScatterDense":
                assert {x.name: x.type for x in node.attribute}.items() >= SCATTER_TYPES.items()
                source = producers[node.input[0]]
                assert text(attrs(source)["output_precision"]) == "fp16"
            if node.op_type in ("Reshape", "Transpose"):
                assert [x.name for x in node.attribute] == ["dims"] and node.attribute[0].type == A.INTS
                assert list(values["dims"]).count(-1) <= 1


def test_precision_rules_rulebooks_and_activations(exported: Exported) -> None:
    graph = exported.native.graph
    nodes = {n.name: attrs(n) for n in graph.node}
    stem = nodes["encoder.conv_input.0"]
    assert text(stem["precision"]) == "fp16"  # disabled by the recipe, after calibration: its ranges are written
    state = get_state(exported.model)
    assert stem["input_dynamic_range"] == pytest.approx(
        float(backend.get_amax(state.quantizers["encoder.conv_input.0.input"])), rel=1e-6)
    stem_weight = numpy_helper.to_array(next(t for t in graph.initializer if t.name == "spconv0.weight"))
    assert np.allclose(stem["weight_dynamic_ranges"], np.abs(stem_weight).reshape(len(stem_weight), -1).max(1),
                       rtol=1e-3)  # max |W| of the folded weight in the file
    assert text(stem["activation"]) == "ReLU"  # [SubMConv3d, BatchNorm1d, ReLU] folded
    block1, block2 = nodes["encoder.block.conv1"], nodes["encoder.block.conv2"]
    assert text(block1["precision"]) == text(block2["precision"]) == "int8"
    assert text(block1["activation"]) == "ReLU" and text(block2["activation"]) == "None"
    assert text(stem["rulebook"]) == text(block1["rulebook"]) == text(block2["rulebook"]) == "subm1"
    down, up = nodes["encoder.down.0"], nodes["encoder.up"]
    assert down["subm"] == 0 and down["inverse"] == 0 and text(down["rulebook"]) == "down1"
    assert up["inverse"] == 1 and text(up["rulebook"]) == "down1"
    assert text(nodes["encoder.out.0"]["output_precision"]) == "fp16"  # feeds ScatterDense
    amax = float(backend.get_amax(state.quantizers["encoder.block.conv1.input"]))
    assert block1["input_dynamic_range"] == pytest.approx(amax, rel=1e-6)
    weight_amax = backend.get_amax(state.quantizers["encoder.block.conv1.weight"]).reshape(-1)
    assert np.allclose(block1["weight_dynamic_ranges"], weight_amax.numpy(), rtol=1e-6)
    # the block's add and the U-Net add are int8 with their op-site ranges; Relu follows the block add
    adds = [n for n in graph.node if n.op_type == "Add"]
    assert [text(attrs(a)["precision"]) for a in adds] == ["int8", "int8"]
    shared = float(backend.get_amax(state.quantizers["encoder.block.add0"]))
    assert attrs(adds[0])["input0_dynamic_range"] == pytest.approx(shared, rel=1e-6) == amax  # share group
    consumers = {i: n for n in graph.node for i in n.input}
    assert consumers[adds[0].output[0]].op_type == "Relu"


def test_executor_matches_pytorch_in_both_layouts(exported: Exported) -> None:
    native, converted = exported.results
    for result in (native, converted):
        assert result["status"] == "ok" and result["rel_error"] < 0.02 and result["max_abs_diff"] < 0.05
    assert native["output_matches_model_layout"] is True
    assert (native["layout"], converted["layout"]) == (exported.layout, exported.other)
    # a BEVFusion-style xyz model permutes to (z, x, y) itself: exact in both layouts
    assert converted["output_matches_model_layout"] is (exported.layout == "xyz")
    # conversion reverses the kernel axes of every weight and the geometry
    a, b = exported.native.graph, exported.converted.graph
    wa = {t.name: numpy_helper.to_array(t) for t in a.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.initializer}
    for na, nb in zip([n for n in a.node if n.op_type == "SparseConvolution"],
                      [n for n in b.node if n.op_type == "SparseConvolution"], strict=True):
        assert np.array_equal(wa[na.input[1]].transpose(0, 3, 2, 1, 4), wb[nb.input[1]])
        for key in ("kernel_size", "stride", "padding", "dilation", "input_spatial_shape"):
            assert list(attrs(na)[key])[::-1] == list(attrs(nb)[key])
    scatter = [n for n in b.node if n.op_type == "ScatterDense"][0]
    assert text(attrs(scatter)["format"]) == exported.other


def test_output_bound_is_a_deployment_capacity(exported: Exported) -> None:
    counts: list[int] = []
    handles = [m.register_forward_hook(lambda mod, args, out: counts.append(out.features.shape[0]))
               for m in exported.model.encoder.modules() if sparse.is_sparse_conv(m)]
    try:
        with torch.no_grad():
            for batch in exported.batches:
                forward_batch(exported.model, batch)
    finally:
        for handle in handles:
            handle.remove()
    bounds = {attrs(n)["output_bound"] for n in exported.native.graph.node if n.op_type == "SparseConvolution"}
    assert bounds == {200000} and exported.results[0]["max_points"] == max(counts)
    assert exported.results[0]["output_bound_used"] == round(max(counts) / 200000, 4)
    assert not any("output_bound" in note for note in exported.results[0]["notes"])


def test_two_exports_are_byte_identical_and_leave_nothing_behind(exported: Exported, tmp_path) -> None:
    hooks_before = {id(m): (len(m._forward_hooks), len(m._forward_pre_hooks)) for m in exported.model.modules()}
    again = export(exported.model, exported.recipe, tmp_path, exported.batches, forward_batch)
    for name in ("native.onnx", "converted.onnx"):
        assert (tmp_path / name).read_bytes() == (exported.out / name).read_bytes()
    assert [r["file_sha256"] for r in again] == [r["file_sha256"] for r in exported.results]
    assert {id(m): (len(m._forward_hooks), len(m._forward_pre_hooks)) for m in exported.model.modules()} == \
        hooks_before
    assert torch._C._len_torch_function_stack() == 0
    meta = {p.key: p.value for p in onnx.load(tmp_path / "native.onnx").metadata_props}
    assert (meta["recipe"], meta["version"], meta["sha256"]) == ("test-sparse", "0.1.0",
                                                                  as_loaded(exported.recipe).sha256)


def test_executor_on_one_int8_conv_equals_a_dense_reference(tmp_path) -> None:
    """Independent check of the executor: one int8 SubMConv3d against fake-quantized dense conv3d."""
    import spconv.pytorch as spconv

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = spconv.SubMConv3d(4, 6, 3, padding=1, bias=True, indice_key="k")

        def forward(self, x):
            return self.conv(x).dense()

    torch.manual_seed(3)
    model = One().eval()
    batches = [b for b in voxel_batches("zyx", count=1)]
    inputs = [spconv.SparseConvTensor(b["voxel_features"], b["coors"], [9, 16, 16], 2) for b in batches]
    recipe = {"recipe": "one", "version": "1.0.0", "quantizers": {"a": {}, "w": {"per_channel": True}},
              "rules": [{"select": {"type": "SubMConv3d"}, "quantize": {"input": "a", "weight": "w"}}],
              "export": [{"format": "onnx-sparse", "path": "one.onnx", "allow_fp16_to_int8": True}]}  # reads "0"
    prepare(model, recipe, inputs)
    (result,) = export(model, recipe, tmp_path, inputs)
    proto = onnx.load(tmp_path / "one.onnx")
    x = inputs[0]
    (out,) = run_scn(proto, x.features, x.indices, x.spatial_shape, x.batch_size)
    conv = attrs(proto.graph.node[0])
    features = fake_quant(x.features.half().float(), conv["input_dynamic_range"])
    weight = torch.from_numpy(numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float32))
    weight = fake_quant(weight, conv["weight_dynamic_ranges"], axis=0)
    bias = torch.from_numpy(numpy_helper.to_array(proto.graph.initializer[1]).astype(np.float32))
    dense = F.conv3d(x.replace_feature(features).dense(), weight.permute(0, 4, 1, 2, 3), bias, padding=1)
    mask = (x.replace_feature(torch.ones(len(x.features), 1)).dense() > 0).float()  # submanifold: active sites only
    expected = (dense * mask).half().float()
    assert torch.allclose(out, expected, atol=2e-3), (out - expected).abs().max()
    assert result["rel_error"] < 5e-3
