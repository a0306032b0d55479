"""Quantized spconv convolutions: identity when disabled, equal to a dense reference when enabled."""

from __future__ import annotations

import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F

from recipe_engine.quant import backend
from recipe_engine.quant.sparse import swap_sparse_module
from recipe_engine.recipe.schema import CalibrationSection, QuantizerSpec
from tests.helpers import random_sparse_input

CAL = CalibrationSection()


def _quantizers(amax_in: float, weight: torch.Tensor):
    input_q = backend.make_quantizer(QuantizerSpec(), CAL)
    weight_q = backend.make_quantizer(QuantizerSpec(per_channel=True), CAL, 0)
    backend.set_amax(input_q, torch.tensor(amax_in))
    per_channel = weight.detach().abs().flatten(1).amax(1).reshape(-1, 1, 1, 1, 1)
    backend.set_amax(weight_q, per_channel)
    return input_q, weight_q


@pytest.mark.parametrize("cls,kwargs", [
    (spconv.SubMConv3d, {"padding": 1}),
    (spconv.SparseConv3d, {"stride": 2, "padding": 1}),
])
def test_disabled_quantizers_are_bit_exact(cls, kwargs) -> None:
    torch.manual_seed(0)
    layer = cls(4, 6, 3, bias=False, indice_key="k", **kwargs).eval()
    x = random_sparse_input()
    with torch.no_grad():
        reference = layer(x).features.clone()
        weight_before = layer.weight
        swap_sparse_module(layer, None, None)
        assert layer.weight is weight_before  # the parameter itself, not a copy
        assert layer.indice_key == "k" and isinstance(layer, cls)
        out = layer(random_sparse_input()).features
    assert torch.equal(out, reference)


def test_subm_quantized_equals_dense_reference() -> None:
    torch.manual_seed(1)
    layer = spconv.SubMConv3d(4, 6, 3, padding=1, bias=False, indice_key="k").eval()
    x = random_sparse_input()
    input_q, weight_q = _quantizers(2.0, layer.weight)
    swap_sparse_module(layer, input_q, weight_q)
    with torch.no_grad():
        out = layer(x)
        # independent reference: fake-quantize by hand, densify, dense conv3d, read the active sites
        scale_in = 2.0 / 127
        q_features = torch.clamp(torch.round(x.features / scale_in), -128, 127) * scale_in
        w_amax = layer.weight.abs().flatten(1).amax(1).reshape(-1, 1, 1, 1, 1)
        w_scale = w_amax / 127
        q_weight = torch.clamp(torch.round(layer.weight / w_scale), -128, 127) * w_scale
        dense_in = x.replace_feature(q_features).dense()  # [B, C, Z, Y, X]
        dense_w = q_weight.permute(0, 4, 1, 2, 3)  # [O, k, k, k, I] -> [O, I, k, k, k]
        dense_out = F.conv3d(dense_in, dense_w, padding=1)
        idx = out.indices.long()
        expected = dense_out[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]]
    assert torch.allclose(out.features, expected, atol=1e-5), (out.features - expected).abs().max()
    # and quantization really happened: the FP32 layer differs
    assert not torch.allclose(out.features, F.conv3d(x.dense(), layer.weight.permute(0, 4, 1, 2, 3),
                                                      padding=1)[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]],
                              atol=1e-4)


def test_quantized_sparse_conv_trains_and_keeps_fp_weight() -> None:
    torch.manual_seed(2)
    layer = spconv.SubMConv3d(4, 6, 3, padding=1, bias=False, indice_key="k")
    input_q, weight_q = _quantizers(2.0, layer.weight)
    swap_sparse_module(layer, input_q, weight_q)
    layer.train()
    x = random_sparse_input()
    features_before = x.features.clone()
    weight_before = layer.weight.detach().clone()
    layer(x).features.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert torch.equal(layer.weight.detach(), weight_before)  # fake-quant weight computed per forward
    assert torch.equal(x.features, features_before)  # inputs never modified in place
