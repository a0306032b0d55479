"""Compatibility profiles: the files CUDA-CenterPoint and CUDA-BEVFusion load, checked against their code.

What each application needs, as read in NVIDIA-AI-IOT/Lidar_AI_Solution (written out here, not
taken from the exporter):
- ``cuda-centerpoint`` mirrors CUDA-CenterPoint ``qat/onnx_export/exptool.py``
  (``node_sparse_conv_tensor_dense``: ScatterDense ``format="zyx"``; ``node_view``: the model's
  ``view(N, C*D, H, W)`` as Reshape, no Transpose; ``export_onnx``: graph ``scn``, input ``"0"`` fp16,
  one output) and ``src/centerpoint.cpp`` ``CenterPoint::doinfer`` (indices (b, z, y, x); output 0 only).
- ``cuda-bevfusion`` mirrors CUDA-BEVFusion ``qat/lean/exptool.py`` ``make_model_forward_hook``
  (``permute(0, 1, 2, 4, 3)`` after a zyx ``dense()``, ``permute(0, 1, 4, 2, 3)`` after an xyz one, then
  ``reshape(N, C*Z, X, Y)``) and ``src/main.cpp`` ``create_core`` (``lidar.backbone.xyz.onnx``,
  ``CoordinateOrder::XYZ``; ``export-scn.py --inverse`` writes the zyx file).
Both read a single fp16 output whose producer chain ends in fp16 before ScatterDense.
"""

from __future__ import annotations

import onnx
import pytest
import torch

from recipe_engine.export.runner import export
from recipe_engine.export.scn_checks import check_scn, int8_fed_by_fp16
from recipe_engine.export.scn_runtime import run_scn
from recipe_engine.pipeline import prepare
from recipe_engine.recipe.errors import RecipeError
from recipe_engine.recipe.loader import load_recipe
from tests.export.models import TinyEncoder, build_sparse, forward_batch, sparse_recipe, voxel_batches
from tests.helpers import randomize_bn

GRID = (9, 16, 12)  # z, y, x: not square, so that swapped BEV axes show in the shape
C, Z, Y, X = 8, 5, 16, 12  # TinyEncoder: 8 channels, its last conv halves z (9 -> 5)


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def prepared(layout: str):
    model = build_sparse(layout)
    model.encoder = TinyEncoder(layout, shape=GRID).eval()
    randomize_bn(model, 1)
    batches = voxel_batches(layout, shape=GRID)
    return model, batches


def exported(layout: str, entry: dict, out):
    model, batches = prepared(layout)
    recipe = sparse_recipe(export=[{"format": "onnx-sparse", "module": "encoder", "path": "scn.onnx", **entry}])
    prepare(model, recipe, batches, forward_batch)
    (result,) = export(model, recipe, out, batches, forward_batch)
    return model, batches, result, onnx.load(out / "scn.onnx")


def tail(proto: onnx.ModelProto) -> list[tuple[str, object]]:
    nodes = list(proto.graph.node)
    start = next(i for i, n in enumerate(nodes) if n.op_type == "ScatterDense")
    return [(n.op_type, text(attrs(n)["format"]) if n.op_type == "ScatterDense" else list(attrs(n)["dims"]))
            for n in nodes[start:]]


def assert_loadable(proto: onnx.ModelProto, dims: list[int]) -> None:
    """What both applications read: input "0" fp16 [N, 4], one fp16 output = the Reshape's, int8 chains."""
    graph = proto.graph
    assert graph.name == "scn" and [i.name for i in graph.input] == ["0"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == 4
    assert len(graph.output) == 1 and graph.output[0].name == graph.node[-1].output[0]
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == dims
    producers = {o: n for n in graph.node for o in n.output}
    scatter = next(n for n in graph.node if n.op_type == "ScatterDense")
    assert text(attrs(producers[scatter.input[0]])["output_precision"]) == "fp16"
    assert int8_fed_by_fp16(proto) == []


def test_cuda_centerpoint_tail(tmp_path) -> None:
    model, batches, result, proto = exported("zyx", {"compat": "cuda-centerpoint"}, tmp_path)
    assert tail(proto) == [("ScatterDense", "zyx"), ("Reshape", [1, C * Z, Y, X])]
    assert_loadable(proto, [1, C * Z, Y, X])
    assert result["compat"] == "cuda-centerpoint" and result["output_matches_model_layout"] is True
    assert result["rel_error"] < 0.02
    check_scn(proto, compat="cuda-centerpoint")
    with pytest.raises(RecipeError, match=r"CUDA-BEVFusion expects ScatterDense -> Transpose -> Reshape"):
        check_scn(proto, compat="cuda-bevfusion")


@pytest.mark.parametrize("model_layout, layout", [("zyx", "zyx"), ("xyz", "xyz"), ("xyz", "zyx")])
def test_cuda_bevfusion_tail(model_layout, layout, tmp_path) -> None:
    entry = {"compat": "cuda-bevfusion", "layout": layout, "source_layout": model_layout}
    model, batches, result, proto = exported(model_layout, entry, tmp_path)
    perm = {"zyx": [0, 1, 2, 4, 3], "xyz": [0, 1, 4, 2, 3]}[layout]
    assert tail(proto) == [("ScatterDense", layout), ("Transpose", perm), ("Reshape", [1, C * Z, X, Y])]
    assert_loadable(proto, [1, C * Z, X, Y])
    check_scn(proto, compat="cuda-bevfusion")
    assert result["rel_error"] < 0.02
    # TinyEncoder "xyz" permutes its dense output to (z, x, y) itself, as BEVFusion's encoder does: the file equals
    # it; the zyx (CenterPoint-style) encoder's BEV is [C*Z, Y, X], so the file holds its transpose
    assert result["output_matches_model_layout"] is (model_layout == "xyz")
    batch = batches[0]
    indices, grid = batch["coors"], model.encoder.sparse_shape
    if layout != model_layout:
        indices, grid = indices[:, [0, 3, 2, 1]], grid[::-1]
    (produced,) = run_scn(proto, batch["voxel_features"], indices, grid, batch["batch_size"])
    with torch.no_grad():
        reference = model.encoder(batch["voxel_features"], batch["coors"], batch["batch_size"])
    if model_layout == "zyx":
        reference = reference.transpose(2, 3)
    assert produced.shape == reference.shape == (batch["batch_size"], C * Z, X, Y)
    scale = float(reference.abs().max())
    assert float((produced - reference).abs().max()) < 0.05 * scale


def test_profiles_are_checked_where_the_recipe_sets_them(write) -> None:
    base = """
        recipe: p
        version: 1.0.0
        export:
          - {format: onnx-sparse, path: scn.onnx, layout: xyz, compat: cuda-centerpoint}
        """
    with pytest.raises(RecipeError, match=r"p\.yaml:4:5: export\[0\]: .*cuda-centerpoint needs layout: zyx"):
        load_recipe(write("p.yaml", base))
    both = base.replace("layout: xyz, compat: cuda-centerpoint", "compat: cuda-bevfusion, allow_fp16_to_int8: true")
    with pytest.raises(RecipeError, match=r"cuda-bevfusion loads int8 chains only; remove allow_fp16_to_int8"):
        load_recipe(write("q.yaml", both))
