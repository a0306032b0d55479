"""Folding many BNs at once (fuse_chains' batched maths) gives the numbers of one fold per pair, and scopes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe_engine.fuse.apply import _scope_test
from recipe_engine.fuse.fold import fold_batchnorms
from recipe_engine.recipe import RecipeError


def _pairs() -> list[tuple[nn.Module, nn.Module, str]]:
    torch.manual_seed(0)
    made = [(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), (nn.Conv2d(3, 5, 1, bias=False), nn.BatchNorm2d(5, eps=1e-3)),
            (nn.Linear(6, 3), nn.BatchNorm1d(3, affine=False)),
            (nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2), nn.BatchNorm2d(6)),
            (nn.Conv2d(2, 3, 1, bias=False).double(), nn.BatchNorm2d(3).double()),
            (nn.Conv2d(2, 3, 1, bias=False).double(), nn.BatchNorm2d(3).double())]
    for _layer, bn in made:
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.05, 3.0)
        if bn.affine:
            bn.weight.data.normal_()
            bn.bias.data.normal_()
        bn.eval()
    return [(layer, bn, f"bn{i}") for i, (layer, bn) in enumerate(made)]


def _reference(layer: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The fold written out per pair in float64 (the documented formula)."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    w = layer.weight.detach().double()
    if isinstance(layer, nn.ConvTranspose2d):
        g = layer.groups
        w = (w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:]) * scale.reshape(g, 1, -1, 1, 1)).reshape(w.shape)
    else:
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(var)
    return w.to(layer.weight.dtype), (b * scale + beta - mean * scale).to(layer.weight.dtype)


def test_batched_fold_is_bitwise_the_per_pair_formula_and_leaves_bns_alone() -> None:
    pairs = _pairs()
    with torch.no_grad():
        expected = [_reference(layer, bn) for layer, bn, _ in pairs]
    bn_state = [{k: v.clone() for k, v in bn.state_dict().items()} for _, bn, _ in pairs]
    fold_batchnorms(pairs)
    for (layer, bn, name), (w, b), state in zip(pairs, expected, bn_state, strict=True):
        assert torch.equal(layer.weight, w), name
        assert torch.allclose(layer.bias.detach(), b, rtol=0, atol=1e-6 * float(b.abs().max())), name
        assert layer.bias.dtype == layer.weight.dtype and layer.bias.requires_grad, name
        assert all(torch.equal(v, bn.state_dict()[k]) for k, v in state.items()), f"{name} modified"
    # the two float64 layers without bias got biases of their own (not views of one shared buffer)
    b4, b5 = pairs[4][0].bias, pairs[5][0].bias
    assert b4.untyped_storage().data_ptr() != b5.untyped_storage().data_ptr()
    assert b4.untyped_storage().nbytes() == 3 * 8


def test_batched_fold_checks_every_pair_before_folding_any() -> None:
    pairs = _pairs()
    pairs[2][1].train()
    before = [layer.weight.detach().clone() for layer, _, _ in pairs]
    with pytest.raises(RecipeError, match="cannot fold bn2: it is in training mode"):
        fold_batchnorms(pairs)
    assert all(torch.equal(layer.weight, w) for (layer, _, _), w in zip(pairs, before, strict=True))


def test_scope_test_matches_a_scan_of_the_scope() -> None:
    scope = ["stage1", "stage2.block3", "head.0", ""]
    names = ["stage1", "stage1.block0.0", "stage10", "stage10.block1", "stage2", "stage2.block3.1",
             "stage2.block30", "head", "head.0", "head.01", "", "x"]
    test = _scope_test(scope)
    for name in names:
        assert test(name) == any(name == s or name.startswith(s + ".") for s in scope), name
    assert _scope_test(None)("anything")
