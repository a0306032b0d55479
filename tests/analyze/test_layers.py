"""Per-layer output SQNR vs FP32 (issue 14): figures checked against an independent computation."""

from __future__ import annotations

import copy
import math

import spconv.pytorch as spconv
import torch
from torch import nn

from recipe_engine.analyze.fidelity import sqnr_db
from recipe_engine.analyze.layers import _Power, measure_layers
from recipe_engine.pipeline import prepare
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from tests.analyze.test_fidelity import InplaceBlock
from tests.helpers import TinySparseNet, random_sparse_input, randomize_bn

WIDTH = 64
RECIPE = {
    "recipe": "layers-test", "version": "1.0.0",
    "quantizers": {"act": {"num_bits": 8, "calibrator": "max"}, "w": {"num_bits": 8}},
}


class Chain(nn.Module):
    """Four orthogonal linear layers: signal and noise power pass through each unchanged."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(4)])
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _forward(model: nn.Module, batch):
    return model(batch)


def fake_quant(x: torch.Tensor, amax: float) -> torch.Tensor:
    scale = 127.0 / amax
    return torch.clamp(torch.round(x * scale), -128, 127) / scale


def _amax(model: nn.Module, name: str) -> float:
    return float(backend.get_amax(get_state(model).quantizers[name]).max())


def _chain(disable: list[str] | None = None) -> tuple[nn.Module, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(256, WIDTH, generator=generator) for _ in range(2)]
    model = Chain().eval()
    recipe = dict(RECIPE, rules=[{"select": {"type": "Linear"}, "quantize": {"input": "act", "weight": "w"}}],
                  disable=disable or [])
    prepare(model, recipe, batches, forward=_forward)
    return model, batches[0]


def test_first_layer_sqnr_is_the_8_bit_error_of_its_input_and_weight() -> None:
    model, batch = _chain()
    first = measure_layers(model, batch, _forward)[0]
    assert (first.name, first.kind, first.type, first.quantized) == ("layers.0", "layer", "QuantLinear", True)
    reference = Chain().layers[0]  # the same seed: the FP32 layer
    with torch.no_grad():
        exact = reference(batch)
        approx = fake_quant(batch, _amax(model, "layers.0.input")) @ \
            fake_quant(reference.weight, _amax(model, "layers.0.weight")).T
    expected = sqnr_db(exact, approx)
    assert 34.0 < expected < 42.0  # 8 bits on a gaussian: ~40 dB for the input alone, a little less with the weight
    assert abs(first.output_db - expected) < 0.05, (first.output_db, expected)
    assert first.input_db == math.inf and first.calls == 1 and first.elements == batch.numel()


def test_error_grows_downstream_and_a_disabled_layer_only_passes_it_on() -> None:
    model, batch = _chain()
    outputs = [item.output_db for item in measure_layers(model, batch, _forward)]
    assert all(later < earlier - 0.5 for earlier, later in zip(outputs, outputs[1:], strict=False)), outputs
    assert outputs[0] - outputs[-1] > 3.0  # four equal noise sources: about 10 log10(4) = 6 dB

    model, batch = _chain(disable=["layers.0", "layers.2"])
    items = measure_layers(model, batch, _forward)
    assert [i.quantized for i in items] == [False, True, False, True]
    assert items[0].output_db == math.inf and items[0].as_dict()["identical"] is True
    assert items[1].input_db == math.inf and math.isfinite(items[1].output_db)
    # an orthogonal full-precision layer keeps signal and noise power: nothing lost in it
    assert abs(items[2].loss_db) < 0.01, items[2]
    assert items[2].input_db == items[1].output_db  # what layer 1 produced is what layer 2 read


def test_inplace_add_site_output_is_measured_before_later_writes() -> None:
    torch.manual_seed(0)
    model = InplaceBlock().eval()
    fp32 = copy.deepcopy(model)
    batches = [torch.randn(2, 4, 8, 8) for _ in range(2)]
    recipe = dict(RECIPE, rules=[{"select": {"type": "tests.analyze.test_fidelity:InplaceBlock"},
                                  "ops": {"add": "act"}}])
    prepare(model, recipe, batches, forward=_forward)
    (site,) = measure_layers(model, batches[0], _forward)
    assert (site.name, site.kind, site.type) == ("add0", "op", "add")
    amax = _amax(model, "add0")
    with torch.no_grad():
        left = fp32.conv(batches[0])
        expected_out = sqnr_db(left + batches[0], fake_quant(left, amax) + fake_quant(batches[0], amax))
    assert site.input_db == math.inf  # both operands are FP32 values (nothing quantized before the add)
    assert abs(site.output_db - expected_out) < 0.05, (site.output_db, expected_out)
    assert 30.0 < site.output_db < 50.0


def test_sparse_layers_are_compared_on_their_active_sites() -> None:
    torch.manual_seed(0)
    model = TinySparseNet().eval()
    randomize_bn(model)
    fp32 = copy.deepcopy(model)
    batches = [random_sparse_input(seed=s) for s in range(2)]
    recipe = dict(RECIPE, rules=[{"select": {"type": "SparseConv"}, "quantize": {"input": "act", "weight": "w"}},
                                 {"select": {"type": "tests.helpers:ResidualSparseBlock"}, "ops": {"add": "act"}}])
    prepare(model, recipe, batches, forward=_forward)
    items = measure_layers(model, batches[0], _forward)
    assert [i.name for i in items] == ["stem.0", "block.conv1", "block.conv2", "block.add0", "down.0"]
    first = items[0]
    sites = len(batches[0].indices)
    assert first.elements == sites * 8 and first.unmatched_sites == 0  # 8 output channels per active site
    conv = fp32.stem[0]
    with torch.no_grad():
        exact = conv(batches[0]).features
        quantized = copy.deepcopy(conv)
        quantized.weight.copy_(fake_quant(conv.weight, _amax(model, "stem.0.weight")))
        features = fake_quant(batches[0].features, _amax(model, "stem.0.input"))
        approx = quantized(batches[0].replace_feature(features)).features
    expected = sqnr_db(exact, approx)
    assert abs(first.output_db - expected) < 0.05, (first.output_db, expected)
    assert 30.0 < expected < 50.0
    assert items[-1].elements > 0 and math.isfinite(items[-1].output_db)


def test_sparse_sites_in_another_order_are_matched_by_coordinates() -> None:
    reference = random_sparse_input(channels=3, seed=4)
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(reference.features.shape, generator=generator) * 0.01
    order = torch.randperm(len(reference.indices), generator=generator)
    keep = order[: len(order) - 7]  # 7 sites missing from the approximation
    approx = spconv.SparseConvTensor((reference.features + noise)[keep], reference.indices[keep],
                                     reference.spatial_shape, reference.batch_size)
    power = _Power()
    power.add([reference], [approx])
    expected = sqnr_db(reference.features[keep], reference.features[keep] + noise[keep])
    assert abs(power.db() - expected) < 1e-4
    assert power.unmatched == 7 and power.elements == len(keep) * 3
