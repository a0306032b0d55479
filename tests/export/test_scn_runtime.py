"""The libspconv reference runtime against dense maths (not spconv), and 1x1 sparse convs end to end."""

from __future__ import annotations

import copy
import weakref

import numpy as np
import onnx
import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from recipe_engine.export import scn_runtime
from recipe_engine.export.runner import export
from recipe_engine.export.scn_runtime import fake_quant, run_scn
from recipe_engine.fuse import apply_fusions
from recipe_engine.pipeline import as_loaded, prepare
from recipe_engine.recipe.errors import RecipeError
from tests.export.models import SKIP_UNET_RECIPE, build_skip_unet, forward_batch, voxel_batches

SHAPE = [9, 16, 16]


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def _voxels(points: int = 300, channels: int = 5, seed: int = 0) -> spconv.SparseConvTensor:
    batch = voxel_batches("zyx", count=1, batch=1, points=points, seed=seed)[0]
    g = torch.Generator().manual_seed(seed)
    features = _fp16(torch.randn(len(batch["coors"]), channels, generator=g))
    return spconv.SparseConvTensor(features, batch["coors"], SHAPE, 1)


def _conv_node(index: int, source: str, target: str, weight: torch.Tensor, **attrs) -> tuple:
    o, *kernel, _ = weight.shape
    base = {"activation": "None", "kernel_size": kernel, "stride": [1, 1, 1], "padding": [0, 0, 0],
            "dilation": [1, 1, 1], "subm": 0, "inverse": 0, "rulebook": "", "output_bound": 200000,
            "precision": "fp16", "output_precision": "fp16"}
    base.update(attrs)
    inits = [numpy_helper.from_array(weight.numpy().astype(np.float16), f"spconv{index}.weight"),
             numpy_helper.from_array(np.zeros(o, np.float16), f"spconv{index}.bias")]
    node = helper.make_node("SparseConvolution", [source, f"spconv{index}.weight", f"spconv{index}.bias"], [target],
                            name=f"conv{index}", **base)
    return node, inits


def _file(convs: list[tuple], scatters: list[tuple[str, str, list[int], int]], in_channels: int) -> onnx.ModelProto:
    """A libspconv graph: ``convs`` from :func:`_conv_node`, then (source, target, grid, channels) ScatterDense outputs."""
    nodes = [c[0] for c in convs]
    inits = [t for c in convs for t in c[1]]
    outputs = []
    for source, target, grid, channels in scatters:
        nodes.append(helper.make_node("ScatterDense", [source], [target], name=f"dense{target}",
                                      input_spatial_shape=grid, format="zyx", output_shape=[1, channels, *grid]))
        outputs.append(helper.make_tensor_value_info(target, TensorProto.FLOAT16, [1, channels, *grid]))
    graph = helper.make_graph(nodes, "scn", [helper.make_tensor_value_info("0", TensorProto.FLOAT16, ["N", in_channels])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def _mask(x: spconv.SparseConvTensor) -> torch.Tensor:
    return (x.replace_feature(torch.ones(len(x.features), 1)).dense() > 0).float()


def test_runtime_reads_1x1_weights_as_o_k_i_where_spconv_reads_i_o() -> None:
    """spconv 2.3.8's kernel-size-1 path computes features @ weight.view(I, O); the runtime reads [O, k.., I]."""
    x = _voxels(channels=5)
    layer = spconv.SubMConv3d(5, 3, 1, bias=False).eval()
    layer.weight.data = _fp16(layer.weight.data)
    with torch.no_grad():
        by_spconv = layer(x).features
    w = layer.weight.detach()  # [3, 1, 1, 1, 5]
    model = _file([_conv_node(0, "0", "1", w, subm=1)], [("1", "2", SHAPE, 3)], 5)
    (dense,) = run_scn(model, x.features, x.indices, SHAPE, 1)
    active = x.indices.long()
    runtime = dense[active[:, 0], :, active[:, 1], active[:, 2], active[:, 3]]
    as_file = x.features @ w.reshape(3, 5).T  # what the format says: W[O, I]
    assert (runtime - _fp16(as_file)).abs().max() < 2e-3 * as_file.abs().max()
    assert (by_spconv - x.features @ w.reshape(5, 3)).abs().max() < 1e-5  # spconv's own convention
    assert (runtime - by_spconv).abs().max() > 0.3 * by_spconv.abs().max()  # ... which the runtime does not share
    # the same layer written in the runtime's layout computes what spconv computed
    relaid = w.reshape(5, 3).T.reshape(3, 1, 1, 1, 5)
    (dense,) = run_scn(_file([_conv_node(0, "0", "1", relaid, subm=1)], [("1", "2", SHAPE, 3)], 5),
                       x.features, x.indices, SHAPE, 1)
    runtime = dense[active[:, 0], :, active[:, 1], active[:, 2], active[:, 3]]
    assert (runtime - by_spconv).abs().max() < 2e-3 * by_spconv.abs().max()


def test_runtime_equals_dense_conv3d_for_subm_strided_and_inverse() -> None:
    """SubM 3x3x3, strided 3x3x3 / s2 and the inverse conv reusing its rulebook, against torch conv3d on a grid."""
    torch.manual_seed(1)
    x = _voxels(points=400, channels=4, seed=1)
    w_subm, w_down, w_up = (_fp16(torch.randn(*s) * 0.3) for s in ([6, 3, 3, 3, 4], [5, 3, 3, 3, 6], [4, 3, 3, 3, 5]))
    convs = [_conv_node(0, "0", "1", w_subm, subm=1, padding=[1, 1, 1], rulebook="subm"),
             _conv_node(1, "1", "2", w_down, stride=[2, 2, 2], padding=[1, 1, 1], rulebook="down"),
             _conv_node(2, "2", "3", w_up, inverse=1, rulebook="down")]
    down_grid = [5, 8, 8]
    model = _file(convs, [("1", "4", SHAPE, 6), ("2", "5", down_grid, 5), ("3", "6", SHAPE, 4)], 4)
    subm, down, up = run_scn(model, x.features, x.indices, SHAPE, 1)

    grid = x.dense()  # [1, C, 9, 16, 16]
    mask = _mask(x)
    expect_subm = _fp16(F.conv3d(grid, w_subm.permute(0, 4, 1, 2, 3), padding=1)) * mask
    assert (subm - expect_subm).abs().max() < 2e-3 * expect_subm.abs().max()
    reached = F.conv3d(mask, torch.ones(1, 1, 3, 3, 3), stride=2, padding=1) > 0  # sites a strided conv produces
    assert torch.equal(down.abs().sum(1, keepdim=True) > 0, reached)
    expect_down = _fp16(F.conv3d(subm, w_down.permute(0, 4, 1, 2, 3), stride=2, padding=1)) * reached
    assert (down - expect_down).abs().max() < 2e-3 * expect_down.abs().max()
    expect_up = F.conv_transpose3d(down, w_up.permute(4, 0, 1, 2, 3), stride=2, padding=1, output_padding=(0, 1, 1))
    expect_up = _fp16(expect_up) * mask  # the inverse conv writes the downsampling conv's input sites
    assert (up - expect_up).abs().max() < 2e-3 * expect_up.abs().max()

    # spconv agrees on these (non-1x1) layers
    layers = [spconv.SubMConv3d(4, 6, 3, padding=1, bias=False, indice_key="subm"),
              spconv.SparseConv3d(6, 5, 3, stride=2, padding=1, bias=False, indice_key="down"),
              spconv.SparseInverseConv3d(5, 4, 3, indice_key="down", bias=False)]
    for layer, w in zip(layers, (w_subm, w_down, w_up), strict=True):
        layer.weight.data.copy_(w)
    with torch.no_grad():
        y = x
        for layer, produced in zip(layers, (subm, down, up), strict=True):
            y = layer(y)
            y = y.replace_feature(_fp16(y.features))
            assert (y.dense() - produced).abs().max() < 2e-3 * produced.abs().max()


def test_runtime_frees_each_tensor_after_its_last_reader(monkeypatch) -> None:
    """At nuScenes scale every layer's features stayed alive to the end of the run (issue 16)."""
    x = _voxels(points=300, channels=4)
    convs = [_conv_node(i, str(i), str(i + 1), _fp16(torch.randn(4, 3, 3, 3, 4) * 0.3), subm=1, padding=[1, 1, 1],
                        rulebook="subm") for i in range(4)]
    made: list[weakref.ref] = []
    alive: list[int] = []
    conv = scn_runtime._Runner.conv

    def watched(self, node, attrs):
        alive.append(sum(ref() is not None for ref in made))
        value = conv(self, node, attrs)
        made.append(weakref.ref(value.features))
        return value

    monkeypatch.setattr(scn_runtime._Runner, "conv", watched)
    (out,) = run_scn(_file(convs, [("4", "5", SHAPE, 4)], 4), x.features, x.indices, SHAPE, 1)
    assert alive == [0, 1, 1, 1]  # when a conv runs, only its input is alive
    assert made[-1]() is None and out.shape == (1, 4, *SHAPE)


def test_int8_layer_accumulates_integers_and_quantizes_its_output_for_its_reader() -> None:
    x = _voxels(channels=4, seed=2)
    w1, w2 = _fp16(torch.randn(6, 3, 3, 3, 4) * 0.2), _fp16(torch.randn(3, 1, 1, 1, 6) * 0.3)
    r_in, r_mid = float(x.features.abs().max()), 2.5
    ranges1 = w1.abs().amax((1, 2, 3, 4)).tolist()
    convs = [_conv_node(0, "0", "1", w1, subm=1, padding=[1, 1, 1], precision="int8", output_precision="int8",
                        input_dynamic_range=r_in, weight_dynamic_ranges=ranges1),
             _conv_node(1, "1", "2", w2, subm=1, precision="int8", input_dynamic_range=r_mid,
                        weight_dynamic_ranges=w2.abs().amax((1, 2, 3, 4)).tolist())]
    (out,) = run_scn(_file(convs, [("2", "3", SHAPE, 3)], 4), x.features, x.indices, SHAPE, 1)
    mid = F.conv3d(fake_quant(x.dense(), r_in), fake_quant(w1, ranges1, axis=0).permute(0, 4, 1, 2, 3), padding=1)
    mid = fake_quant(mid * _mask(x), r_mid)  # int8 output on the reader's grid
    w2q = fake_quant(w2, w2.abs().amax((1, 2, 3, 4)), axis=0).reshape(3, 6)
    expected = _fp16(torch.einsum("oi,bixyz->boxyz", w2q, mid))
    assert (out - expected).abs().max() < 2e-3 * expected.abs().max()
    # an int8 output whose reader runs fp16 has no scale: refused
    convs[1] = _conv_node(1, "1", "2", w2, subm=1)
    with pytest.raises(RecipeError, match="writes an int8 output"):
        run_scn(_file(convs, [("2", "3", SHAPE, 3)], 4), x.features, x.indices, SHAPE, 1)


# ----------------------------------------------------------------------------- 1x1 convs end to end
def _unet_outputs(model, batches) -> list[torch.Tensor]:
    with torch.no_grad():
        return [forward_batch(model, b) for b in batches]


def test_batchnorm_folds_into_1x1_sparse_convs_exactly() -> None:
    model = build_skip_unet()
    batches = voxel_batches("zyx")
    reference = _unet_outputs(model, batches)
    fused = copy.deepcopy(model)
    apply_fusions(fused, as_loaded(SKIP_UNET_RECIPE).spec, "before_calibration")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in fused.modules())
    scale = max(r.abs().max().item() for r in reference)
    diff = max((a - b).abs().max().item() for a, b in zip(_unet_outputs(fused, batches), reference, strict=True))
    assert diff <= 1e-5 * scale, (diff, scale)  # folding along axis 0 of [O, 1, 1, 1, I] gave 0.41 on 1.47


def test_1x1_per_channel_axis_and_export_through_the_runtime(tmp_path) -> None:
    model = build_skip_unet()
    batches = voxel_batches("zyx")
    recipe = {**SKIP_UNET_RECIPE, "export": [{"format": "onnx-sparse", "path": "unet.onnx"}]}
    prepare(model, recipe, batches, forward_batch)
    for layer in (model.skip[0], model.mid[0], model.head[0]):
        q = layer.weight_quantizer
        assert q.axis in (1, (1,))
        matrix = layer.weight.detach().reshape(layer.in_channels, layer.out_channels)
        assert torch.allclose(q.amax.reshape(-1), matrix.abs().amax(0), rtol=1e-6)
    assert model.down[0].weight_quantizer.axis in (0, (0,))
    (result,) = export(model, recipe, tmp_path, batches, forward_batch)
    assert result["int8_convs"] == 5 and result["rel_error"] < 0.02, result
    # the runtime on the written file against the PyTorch fake-quant model, on another batch too
    proto = onnx.load(tmp_path / "unet.onnx")
    for batch in batches:
        with torch.no_grad():
            expected = forward_batch(model, batch)
        (out,) = run_scn(proto, batch["voxel_features"], batch["coors"], SHAPE, batch["batch_size"])
        out = out.reshape(expected.shape)
        assert (out - expected).abs().max() < 0.02 * expected.abs().max()
    # each 1x1 weight in the file is W[O, I] = weight.view(I, O).T, the matrix PyTorch multiplied by
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "SparseConvolution"]
    skip = next(n for n in convs if n.name == "skip.0")
    with torch.no_grad():
        quantized = model.skip[0].weight_quantizer(model.skip[0].weight.reshape(8, 12))
    assert np.allclose(inits[skip.input[1]].reshape(12, 8), quantized.T.half().numpy())
