"""BN/ReLU folding: fused vs unfused outputs on random data, channel axes, blocks, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe_engine.fuse import apply_fusions, fuse_block, fuse_chains, register
from recipe_engine.fuse.fold import fold_batchnorm, fold_relu_into_sparse
from recipe_engine.quant.sparse import QuantSparseConvMixin
from recipe_engine.recipe import RecipeError, load_recipe_data
from tests.helpers import ResidualSparseBlock, TinySparseNet, random_sparse_input, randomize_bn


def _close(fused: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max().item()
    diff = (fused - reference).abs().max().item()
    assert diff <= 1e-5 * max(scale, 1.0), f"max diff {diff} vs scale {scale}"


@pytest.mark.parametrize("layer,bn,shape", [
    (nn.Conv1d(3, 5, 3, bias=False), nn.BatchNorm1d(5), (2, 3, 9)),
    (nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), (2, 3, 9, 9)),
    (nn.Conv3d(3, 5, 3), nn.BatchNorm3d(5), (2, 3, 6, 6, 6)),
    (nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), (2, 4, 9, 9)),
    (nn.ConvTranspose1d(3, 5, 2, stride=2), nn.BatchNorm1d(5), (2, 3, 7)),
    (nn.ConvTranspose2d(3, 5, 2, stride=2, bias=False), nn.BatchNorm2d(5), (2, 3, 7, 7)),
    (nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), (2, 4, 7, 7)),
    (nn.ConvTranspose3d(3, 5, 2, stride=2), nn.BatchNorm3d(5), (2, 3, 4, 4, 4)),
    (nn.Linear(7, 5), nn.BatchNorm1d(5), (6, 7)),
])
def test_dense_chain_fold_matches_unfused(layer, bn, shape) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(layer, bn, nn.ReLU()).eval()
    randomize_bn(model)
    x = torch.randn(shape)
    with torch.no_grad():
        reference = model(x)
        fusions = fuse_chains(model, [type(layer).__name__, type(bn).__name__, "ReLU"])
        fused = model(x)
    assert [f.modules for f in fusions] == [["0", "1"]]  # dense ReLU stays a module
    assert isinstance(model[1], nn.Identity) and isinstance(model[2], nn.ReLU)
    _close(fused, reference)


def test_transposed_conv_uses_output_channel_axis() -> None:
    # in != out channels so scaling along the wrong axis fails loudly (shape) or numerically
    torch.manual_seed(1)
    layer, bn = nn.ConvTranspose2d(5, 5, 2, stride=2), nn.BatchNorm2d(5)
    model = nn.Sequential(layer, bn).eval()
    randomize_bn(model, seed=3)
    x = torch.randn(2, 5, 4, 4)
    with torch.no_grad():
        reference = model(x)
        wrong = layer.weight.detach().clone() * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(-1, 1, 1, 1)
        fold_batchnorm(layer, bn)
        fused = layer(x)
        assert not torch.allclose(layer.weight, wrong)  # axis 0 scaling would have given this
    _close(fused, reference)


def test_sparse_chain_folds_bn_and_relu_into_act_type() -> None:
    torch.manual_seed(0)
    model = TinySparseNet().eval()
    randomize_bn(model)
    x = random_sparse_input()
    with torch.no_grad():
        reference = model(x)
        fusions = fuse_chains(model, ["SubMConv3d|SparseConv3d", "BatchNorm1d", "ReLU"])
        fused = model(random_sparse_input())
    assert [f.modules for f in fusions] == [["stem.0", "stem.1", "stem.2"], ["down.0", "down.1", "down.2"]]
    assert str(model.stem[0].act_type).endswith("ReLU") and isinstance(model.stem[2], nn.Identity)
    assert isinstance(model.stem[0], QuantSparseConvMixin)  # biased sparse convs run bias in PyTorch on CPU
    _close(fused, reference)


def test_sparse_relu_can_stay_a_module() -> None:
    model = TinySparseNet().eval()
    randomize_bn(model)
    x = random_sparse_input()
    with torch.no_grad():
        reference = model(x)
        fuse_chains(model, ["SparseConv", "BatchNorm1d", "ReLU"], options={"fuse_relu": False})
        assert isinstance(model.stem[2], nn.ReLU)
        _close(model(random_sparse_input()), reference)


def test_relu_act_type_equals_explicit_relu() -> None:
    torch.manual_seed(4)
    model = TinySparseNet().eval()
    randomize_bn(model)
    fuse_chains(model, ["SparseConv", "BatchNorm1d"])  # ReLU kept as module
    with torch.no_grad():
        explicit = model(random_sparse_input())
        for container in (model.stem, model.down):
            fold_relu_into_sparse(container[0])
            container._modules["2"] = nn.Identity()
        fused = model(random_sparse_input())
    assert torch.equal(fused, explicit)


def test_block_fold_with_downsample_path() -> None:
    class Bottleneck(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(4, 3, 1, bias=False), nn.BatchNorm2d(3)
            self.conv2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
            self.conv3, self.bn3 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
            self.relu = nn.ReLU()
            self.downsample = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            out += self.downsample(x)
            return self.relu(out)

    torch.manual_seed(0)
    block = Bottleneck().eval()
    randomize_bn(block)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        reference = block(x)
        fusions = fuse_block(block, "layer1.0")
        fused = block(x)
    folded = sorted(m for f in fusions for m in f.modules)
    assert folded == sorted(["layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.0.conv3",
                             "layer1.0.bn3", "layer1.0.downsample.0", "layer1.0.downsample.1"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    _close(fused, reference)


def test_sparse_block_fold_keeps_forward_working() -> None:
    torch.manual_seed(0)
    block = ResidualSparseBlock(4, "k").eval()
    randomize_bn(block)
    x = random_sparse_input()
    with torch.no_grad():
        reference = block(x).features
        fuse_block(block, "b", {"conv1": "bn1", "conv2": "bn2"}, options={"fuse_relu": True})
        fused = block(random_sparse_input()).features
    _close(fused, reference)


def test_training_mode_bn_is_refused_and_missing_stats_too() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with pytest.raises(RecipeError, match="training mode"):
        fuse_chains(model, ["Conv2d", "BatchNorm2d"])
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(RecipeError, match="running statistics"):
        fuse_chains(model, ["Conv2d", "BatchNorm2d"])


def test_recipe_entries_phases_registry_and_no_match() -> None:
    calls = []

    @register("count_only")
    def _count(model, scope, options):
        calls.append((scope, options))
        return []

    model = TinySparseNet().eval()
    spec = load_recipe_data({"recipe": "t", "version": "1.0.0", "fuse": [
        {"pattern": ["SparseConv", "BatchNorm1d", "ReLU"], "within": "down"},
        {"pattern": ["SparseConv", "BatchNorm1d", "ReLU"], "within": "stem", "phase": "before_export"},
        {"block": "tests.helpers:ResidualSparseBlock"},
        {"use": "count_only", "with": {"k": 1}, "optional": True},
    ]}).spec
    first = apply_fusions(model, spec, "before_calibration")
    assert [f.modules[0] for f in first] == ["down.0", "block.conv1", "block.conv2"]
    assert calls == [(None, {"k": 1})]
    assert isinstance(model.stem[1], nn.BatchNorm1d)
    later = apply_fusions(model, spec, "before_export")
    assert [f.modules for f in later] == [["stem.0", "stem.1", "stem.2"]]
    nothing = load_recipe_data({"recipe": "t", "version": "1.0.0",
                                "fuse": [{"pattern": ["Conv2d", "BatchNorm2d"]}]}).spec
    with pytest.raises(RecipeError, match="folds nothing"):
        apply_fusions(TinySparseNet().eval(), nothing)


@pytest.mark.parametrize("name", ["centerpoint", "bevfusion"])
def test_zoo_recipes_fold_every_batchnorm_they_declare(name: str) -> None:
    from pathlib import Path

    from recipe_engine.recipe import load_recipe
    from recipe_engine.zoo import bevfusion, centerpoint

    module = {"centerpoint": centerpoint, "bevfusion": bevfusion}[name]
    spec = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / f"{name}_int8.yaml").spec
    model = module.build().eval()
    randomize_bn(model)
    total = sum(1 for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    first = apply_fusions(model, spec, "before_calibration")
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sparse_input = "encoder.conv_input.1" if name == "centerpoint" else "lidar.conv_input.1"
    assert left == [sparse_input]  # NVIDIA's scheme: conv_input's BN waits for export
    later = apply_fusions(model, spec, "before_export")
    assert len(first) + len(later) == total  # every fusion folds exactly one BatchNorm
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
