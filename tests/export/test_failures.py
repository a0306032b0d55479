"""Exports that must fail, each with a clear RecipeError."""

from __future__ import annotations

import onnx
import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from recipe_engine.export.runner import export
from recipe_engine.export.scn_checks import check_scn
from recipe_engine.pipeline import prepare
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from recipe_engine.recipe.errors import RecipeError
from tests.export.models import (
    build_dense,
    build_sparse,
    dense_batches,
    dense_recipe,
    forward_batch,
    sparse_recipe,
    voxel_batches,
)

SCN = [{"format": "onnx-sparse", "module": "encoder", "path": "scn.onnx"}]


@pytest.fixture(scope="module")
def sparse_export(tmp_path_factory):
    """A prepared sparse model and a valid exported file to tamper with."""
    out = tmp_path_factory.mktemp("scn")
    recipe = sparse_recipe(export=SCN)
    model = build_sparse()
    batches = voxel_batches()
    prepare(model, recipe, batches, forward_batch)
    export(model, recipe, out, batches, forward_batch)
    return model, batches, recipe, onnx.load(out / "scn.onnx")


def _node(proto: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.name == name)


def _set(node: onnx.NodeProto, key: str, value) -> None:
    for attr in node.attribute:
        if attr.name == key:
            attr.CopyFrom(onnx.helper.make_attribute(key, value))


def test_nan_amax_fails_loudly(sparse_export, tmp_path) -> None:
    model, batches, recipe, _ = sparse_export
    quantizer = get_state(model).quantizers["encoder.down.0.input"]
    saved = backend.get_amax(quantizer).clone()
    backend.set_amax(quantizer, torch.tensor(float("nan")))
    try:
        with pytest.raises(RecipeError, match=r"encoder\.down\.0\.input = encoder\.add0 has a non-finite amax .*NaN"):
            export(model, recipe, tmp_path, batches, forward_batch)
    finally:
        backend.set_amax(quantizer, saved)
    assert not (tmp_path / "scn.onnx").exists()


def test_nan_amax_in_a_dense_export(tmp_path) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx"}])
    model, batches = build_dense(), dense_batches()
    prepare(model, recipe, batches)
    backend.set_amax(get_state(model).quantizers["merge.head.input"], torch.tensor(float("inf")))
    with pytest.raises(RecipeError, match=r"merge\.head\.input has a non-finite amax"):
        export(model, recipe, tmp_path, batches)


def test_scatter_dense_fed_by_an_int8_producer(sparse_export) -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(sparse_export[3])
    check_scn(proto)  # the export itself is valid
    _set(_node(proto, "encoder.out.0"), "output_precision", "int8")
    with pytest.raises(RecipeError, match=r"producer of ScatterDense must have output_precision='fp16'"):
        check_scn(proto)


def test_add_inputs_with_different_precisions(sparse_export) -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(sparse_export[3])
    _set(_node(proto, "encoder.block.conv2"), "output_precision", "int8")
    _set(_node(proto, "encoder.conv_input.0"), "output_precision", "fp16")
    with pytest.raises(RecipeError, match=r"Add 'encoder\.block\.add0': its inputs have different precisions"):
        check_scn(proto)


def test_output_bound_below_the_voxel_count(sparse_export, tmp_path) -> None:
    model, batches, _, _ = sparse_export
    recipe = sparse_recipe(export=[{**SCN[0], "output_bound": 100}])
    with pytest.raises(RecipeError, match=r"output_bound 100 is below the \d+ points .* produced in calibration"):
        export(model, recipe, tmp_path, batches, forward_batch)
    proto = onnx.ModelProto()
    proto.CopyFrom(sparse_export[3])
    with pytest.raises(RecipeError, match=r"output_bound \d+ is below the 299999 points"):
        check_scn(proto, {"encoder.block.conv1": 299999})


def test_output_bound_close_to_the_voxel_count_warns(sparse_export, tmp_path) -> None:
    model, batches, _, _ = sparse_export
    (plain,) = export(model, sparse_recipe(export=SCN), tmp_path, batches, forward_batch)
    most = plain["max_points"]
    assert plain["output_bound"] == 200000 and not any("output_bound" in n for n in plain["notes"])
    recipe = sparse_recipe(export=[{**SCN[0], "output_bound": most + 10}])
    with pytest.warns(UserWarning, match=rf"output_bound {most + 10}: calibration reached {most} points"):
        (result,) = export(model, recipe, tmp_path, batches, forward_batch)
    assert result["output_bound"] == most + 10 and any("real frames may overflow" in n for n in result["notes"])
    with pytest.raises(RecipeError, match=rf"output_bound {most - 1} is below the {most} points"):
        export(model, sparse_recipe(export=[{**SCN[0], "output_bound": most - 1}]), tmp_path, batches, forward_batch)


def test_duplicate_names_and_missing_bias(sparse_export) -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(sparse_export[3])
    proto.graph.initializer[2].name = proto.graph.initializer[0].name
    conv = _node(proto, "encoder.down.0")
    del conv.input[2]
    with pytest.raises(RecipeError) as info:
        check_scn(proto)
    assert "initializer names are not unique" in str(info.value)
    assert "bias is required" in str(info.value)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = spconv.SubMConv3d(4, 4, 3, padding=1, bias=False, indice_key="a")

    def forward(self, x):
        out = self.conv(x)
        return out.replace_feature(out.features * 2).dense()


def test_unsupported_operation_is_named(tmp_path) -> None:
    model = _Scaled().eval()
    batches = [spconv.SparseConvTensor(b["voxel_features"], b["coors"], [9, 16, 16], 2) for b in voxel_batches(count=1)]
    recipe = {"recipe": "bad", "version": "1.0.0", "quantizers": {"a": {}},
              "rules": [{"select": {"type": "SubMConv3d"}, "quantize": {"input": "a", "weight": "a"}}],
              "export": [{"format": "onnx-sparse", "path": "bad.onnx"}]}
    prepare(model, recipe, batches)
    with pytest.raises(RecipeError, match=r"`(mul|__mul__)` on traced sparse features cannot be expressed"):
        export(model, recipe, tmp_path, batches)


def test_unfolded_batchnorm_is_explained(tmp_path) -> None:
    recipe = sparse_recipe(export=SCN)
    recipe["fuse"] = []
    model, batches = build_sparse(), voxel_batches()
    prepare(model, recipe, batches, forward_batch)
    with pytest.raises(RecipeError, match=r"(?s)`batch_norm` on traced sparse features.*fuse:"):
        export(model, recipe, tmp_path, batches, forward_batch)


def test_tensorrt_source_must_be_an_earlier_qdq_export(tmp_path) -> None:
    recipe = dense_recipe(export=[{"format": "tensorrt", "path": "a.engine", "source": "a.onnx"},
                                  {"format": "onnx-qdq", "path": "a.onnx"}])
    model, batches = build_dense(), dense_batches()
    # checked when the recipe is validated, before any work
    with pytest.raises(RecipeError, match=r"export\[0\]\.source: source 'a\.onnx' is not the path of an earlier"):
        prepare(model, recipe, batches)


def test_missing_module_suggests_names(tmp_path) -> None:
    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "a.onnx", "module": "merg"}])
    model, batches = build_dense(), dense_batches()
    prepare(model, recipe, batches)
    with pytest.raises(RecipeError, match=r"(?s)export module 'merg' does not exist.*did you mean: merge"):
        export(model, recipe, tmp_path, batches)
