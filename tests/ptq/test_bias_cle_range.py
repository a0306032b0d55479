"""Bias correction, cross-layer equalisation and range search on real dense and spconv layers."""

from __future__ import annotations

import copy

import pytest
import torch

from recipe_engine import ptq
from recipe_engine.ptq.cle import channel_ranges
from recipe_engine.ptq.context import fp32_copy
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from tests.ptq.common import layer_mse, outputs
from tests.ptq.models import SparseNet, dense_batches, dense_net, quantized, recipe, sparse_batches


def _channel_mean_error(reference, model, name, batches, dim) -> torch.Tensor:
    ref, got = outputs(reference, name, batches), outputs(model, name, batches)
    diff = torch.cat([(a - b).movedim(dim, -1).reshape(-1, a.shape[dim]) for a, b in zip(ref, got, strict=True)])
    return diff.double().mean(0)


@pytest.mark.parametrize("which", ["pytorch-quantization", "modelopt"])
def test_bias_correction_zeroes_the_mean_output_error_dense(which) -> None:
    fp32, calib = dense_net(), dense_batches(3)
    model = quantized(fp32, recipe(3, which), calib)
    before = {n: _channel_mean_error(fp32, model, n, calib, 1 if n != "6" else -1) for n in ("0", "2", "6")}
    record = ptq.run(model, [{"step": "bias_correction", "batches": 3}], calib)[0]
    assert record["corrected"] == ["0", "2", "6"]
    for name in ("0", "2", "6"):
        after = _channel_mean_error(fp32, model, name, calib, 1 if name != "6" else -1)
        scale = float(torch.cat(outputs(fp32, name, calib)).abs().mean())
        assert float(before[name].abs().max()) > 1e-3 * scale  # there was a bias to correct
        assert float(after.abs().max()) < 1e-5 * scale, (name, after.abs().max(), scale)


@pytest.mark.parametrize("which", ["pytorch-quantization", "modelopt"])
def test_bias_correction_sparse_over_active_voxels(which) -> None:
    calib = sparse_batches(3)
    model = quantized(SparseNet(), recipe(3, which, types=("SubMConv3d",)), calib)
    reference = fp32_copy(model)
    ptq.run(model, [{"step": "bias_correction", "batches": 3}], calib)
    for name in ("net.0", "net.2", "net.4"):
        error = _channel_mean_error(reference, model, name, calib, -1)  # features [N_active, C]
        scale = float(torch.cat(outputs(reference, name, calib)).abs().mean())
        assert float(error.abs().max()) < 1e-5 * scale, (name, error.abs().max(), scale)


@pytest.mark.parametrize("net", ["dense", "sparse"])
def test_cle_equalises_ranges_and_keeps_fp32_outputs(net) -> None:
    if net == "dense":
        calib, fp32 = dense_batches(2), dense_net()
        model = quantized(fp32, recipe(8), calib)
        pairs = [["0", "2"]]
    else:
        calib = sparse_batches(2)
        model = quantized(SparseNet(), recipe(8, types=("SubMConv3d",)), calib)
        pairs = [["net.0", "net.2"], ["net.2", "net.4"]]  # net.2: kernel size 1, weight read as [I, O]
    reference = fp32_copy(model)
    modules = dict(model.named_modules())
    spread_before = [_spread(*channel_ranges(modules[a], modules[b])) for a, b in pairs]
    record = ptq.run(model, [{"step": "cle", "iterations": 1 if net == "dense" else 20}], calib)[0]
    assert record["pairs"] == pairs and record["undone"] == []
    for (a, b), before in zip(pairs, spread_before, strict=True):
        range_a, range_b = channel_ranges(modules[a], modules[b])
        assert before > 1.2  # the channels were unequal
        assert torch.allclose(range_a, range_b, rtol=1e-3), (a, b, (range_a / range_b).max())
    after = fp32_copy(model)
    for batch in calib:
        out, ref = _run(after, batch), _run(reference, batch)
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    # the second layers' input statistics (the report's histograms) are of what they read after equalisation
    for _, second in pairs:
        reads: list[float] = []
        hook = dict(after.named_modules())[second].register_forward_pre_hook(
            lambda _m, args, seen=reads: seen.append(float(getattr(args[0], "features", args[0]).abs().max())))
        for batch in calib:
            _run(after, batch)
        hook.remove()
        stats = backend.calibration_statistics(backend.module_quantizer(modules[second], "input"))
        top = stats["edges"][-1] if "edges" in stats else stats["amax"]
        assert float(top) == pytest.approx(max(reads), rel=1e-5), second
    # the weight amax follows the new weights (max calibrator: per channel |w| max)
    for name in {n for pair in pairs for n in pair}:
        quantizer = backend.module_quantizer(modules[name], "weight")
        from recipe_engine.ptq.weights import weight_view

        view = weight_view(modules[name], modules[name].weight.detach())
        expected = view.abs().amax(dim=[d for d in range(view.dim()) if d != backend.describe(quantizer)["axis"]])
        assert torch.allclose(backend.get_amax(quantizer).flatten(), expected.flatten(), rtol=1e-6)


def test_cle_undoes_a_pair_whose_output_has_another_reader() -> None:
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.relu, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = self.relu(self.a(x))
            return self.b(y) + y  # y also reaches the output directly: scaling it changes the function

    calib = dense_batches(2)
    model = quantized(Residual().eval(), recipe(8, types=("Conv2d",)), calib)
    weights = [p.detach().clone() for p in model.parameters()]
    record = ptq.run(model, [{"step": "cle"}], calib)[0]
    assert record["pairs"] == [] and record["undone"] == [["a", "b"]]
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_range_search_beats_max_calibration_on_the_layer_output() -> None:
    fp32, calib, held_out = dense_net(), dense_batches(4), dense_batches(2, seed=7)
    spec = recipe(8, method="max")
    spec["quantizers"]["act"] = {"num_bits": 4, "calibrator": "max"}  # low-bit activations: range matters
    with_max = quantized(fp32, spec, calib)
    searched = copy.deepcopy(with_max)
    record = ptq.run(searched, [{"step": "range_search", "batches": 4}], calib, calibration=None)[0]
    assert record["quantizers"] == 3
    for name in ("2", "6"):
        for batches in (calib, held_out):
            assert layer_mse(fp32, searched, name, batches) < 0.9 * layer_mse(fp32, with_max, name, batches)
    state = get_state(searched)
    assert float(backend.get_amax(state.quantizers["2.input"])) < float(
        backend.get_amax(get_state(with_max).quantizers["2.input"]))


def _spread(range_a: torch.Tensor, range_b: torch.Tensor) -> float:
    ratio = range_a / range_b
    return float(ratio.max() / ratio.min())


def _run(model, batch):
    with torch.no_grad():
        return model(**batch) if isinstance(batch, dict) else model(batch)
