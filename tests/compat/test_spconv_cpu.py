"""The spconv CPU workaround: deterministic multi-threaded results and a working backward."""

from __future__ import annotations

import spconv.pytorch as spconv
import torch

import recipe_engine.quant.sparse  # noqa: F401  (installs the workaround)
from tests.helpers import random_sparse_input


def test_repeated_sparse_convs_agree_with_two_threads() -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        subm = spconv.SubMConv3d(4, 6, 3, bias=False, padding=1, indice_key="k").eval()
        down = spconv.SparseConv3d(4, 6, 3, stride=2, bias=False, padding=1).eval()
        with torch.no_grad():
            for layer in (subm, down):
                outs = [layer(random_sparse_input()).dense() for _ in range(12)]
                assert all(torch.equal(o, outs[0]) for o in outs)  # without the fix ~1/3 to all differ
        assert torch.get_num_threads() == 2  # the guard restores the thread count
    finally:
        torch.set_num_threads(previous)


def test_backward_runs_on_cpu_and_matches_dense_gradient() -> None:
    torch.manual_seed(0)
    layer = spconv.SubMConv3d(4, 5, 3, bias=False, padding=1, indice_key="k")
    x = random_sparse_input()
    out = layer(x)
    out.features.square().sum().backward()
    dense_weight = layer.weight.detach().permute(0, 4, 1, 2, 3).clone().requires_grad_(True)
    dense_out = torch.nn.functional.conv3d(x.dense(), dense_weight, padding=1)
    idx = out.indices.long()
    dense_out[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]].square().sum().backward()
    expected = dense_weight.grad.permute(0, 2, 3, 4, 1)
    assert torch.allclose(layer.weight.grad, expected, atol=1e-4, rtol=1e-4)


def test_biased_and_relu_fused_sparse_convs_run_inference_on_cpu() -> None:
    """spconv's default bias=True asserted "cpu don't support act and bias" in eval mode on CPU."""
    torch.manual_seed(0)
    x = random_sparse_input()
    for layer in (spconv.SubMConv3d(4, 6, 3, padding=1, indice_key="k"),
                  spconv.SparseConv3d(4, 6, 3, stride=2, padding=1)):
        with torch.no_grad():
            reference = layer.train()(x).features  # training: spconv adds the bias itself, outside the kernel
            assert torch.allclose(layer.eval()(x).features, reference, atol=1e-6)
            relu = type(layer.act_type).ReLU
            layer.act_type = relu
            assert torch.allclose(layer(x).features, torch.relu(reference), atol=1e-6)
            assert (layer(x).features < 0).sum() == 0 and (reference < 0).sum() > 0
