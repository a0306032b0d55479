"""AdaRound and block reconstruction: lower layer error than nearest rounding, weights on the grid, deterministic."""

from __future__ import annotations

import copy

import pytest
import torch

from recipe_engine import ptq
from recipe_engine.ptq.context import fp32_copy
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from tests.ptq.common import layer_mse, weights_on_grid
from tests.ptq.models import SparseNet, dense_batches, dense_net, quantized, recipe, sparse_batches

BACKENDS = ["pytorch-quantization", "modelopt"]


def _amax(model):
    return {n: backend.get_amax(q).clone() for n, q in get_state(model).quantizers.items()}


@pytest.mark.parametrize("which", BACKENDS)
def test_adaround_beats_nearest_rounding_on_a_4bit_conv(which) -> None:
    fp32 = dense_net()
    calib, held_out = dense_batches(4, seed=0), dense_batches(2, seed=9)
    spec = recipe(8, which)  # the known-hard layer: 4-bit weights in conv "2", INT8 elsewhere
    spec["quantizers"]["w4"] = {"num_bits": 4, "per_channel": True}
    spec["rules"].append({"select": "2", "quantize": {"input": "act", "weight": "w4"}})
    nearest = quantized(fp32, spec, calib)
    rounded = copy.deepcopy(nearest)
    amax_before = _amax(rounded)
    records = ptq.run(rounded, [{"step": "adaround", "layers": "2", "iterations": 200}], calib)
    for batches in (calib, held_out):
        err_nearest = layer_mse(fp32, nearest, "2", batches)
        err_ada = layer_mse(fp32, rounded, "2", batches)
        assert err_ada < err_nearest / 1.5, (err_ada, err_nearest)
    assert records[0]["units"][0]["changed_weights"] > 0
    assert weights_on_grid(rounded[2]) < 1e-6  # fake quantization (and Q/DQ) reproduces the written weights
    after = _amax(rounded)
    assert all(torch.equal(amax_before[n], after[n]) for n in after)  # same amax
    assert torch.equal(rounded[0].weight, nearest[0].weight)  # `layers` restricts the step


def test_adaround_is_deterministic_for_a_seed() -> None:
    fp32, calib = dense_net(), dense_batches(3)
    base = quantized(fp32, recipe(4), calib)
    runs = []
    for _ in range(2):
        model = copy.deepcopy(base)
        ptq.run(model, [{"step": "adaround", "iterations": 40, "batches": 3, "seed": 3}], calib)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], base.parameters(), strict=True))


def test_adaround_on_sparse_convs_including_kernel_size_1() -> None:
    fp32, calib = SparseNet(), sparse_batches(3)
    spec = recipe(4, types=("SubMConv3d",))
    nearest = quantized(fp32, spec, calib)
    fp32 = fp32_copy(nearest)  # spconv's CPU kernels refuse a bias: the engine's sparse forward applies it
    rounded = copy.deepcopy(nearest)
    ptq.run(rounded, [{"step": "adaround", "iterations": 120}], calib)
    for name in ("net.0", "net.2", "net.4"):  # net.2 is a 1x1x1 layer: spconv computes features @ weight.reshape(I, O)
        err_nearest, err_ada = layer_mse(fp32, nearest, name, calib), layer_mse(fp32, rounded, name, calib)
        assert err_ada < err_nearest / 1.5, (name, err_ada, err_nearest)
        assert weights_on_grid(dict(rounded.named_modules())[name]) < 1e-6


def test_block_reconstruction_and_task_loss() -> None:
    fp32, calib = dense_net(), dense_batches(3)
    base = quantized(fp32, recipe(3), calib)
    err_base = layer_mse(fp32, base, "6", calib)
    results = {}
    for name, step in (("brecq", {"step": "brecq", "blocks": "re:[0-3]", "iterations": 80}),
                       ("task", {"step": "brecq", "blocks": "re:[0-3]", "iterations": 80, "task_loss": 1.0})):
        model = copy.deepcopy(base)
        record = ptq.run(model, [step], calib)[0]
        results[name] = layer_mse(fp32, model, "6", calib)
        assert record["mean_error_after"] < record["mean_error_nearest"]
    assert results["brecq"] < err_base / 1.5 and results["task"] < err_base / 1.5, (results, err_base)



class _TwoMaps(torch.nn.Module):
    """A block returning a tuple of maps (as an FPN neck does)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.left = torch.nn.Conv2d(16, 8, 3, padding=1)
        self.right = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.left(y), self.right(y)


def test_block_reconstruction_of_a_block_returning_a_tuple() -> None:
    torch.manual_seed(0)
    fp32 = torch.nn.Sequential(_TwoMaps()).eval()
    calib = dense_batches(3)
    model = quantized(fp32, recipe(3, types=("Conv2d",)), calib)
    record = ptq.run(model, [{"step": "brecq", "blocks": "re:^0$", "iterations": 80}], calib)[0]
    assert record["mean_error_after"] < 0.8 * record["mean_error_nearest"], record
