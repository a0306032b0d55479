"""Small real models and recipes for the export tests (dense with add + cat; CenterPoint-like sparse)."""

from __future__ import annotations

import copy

import spconv.pytorch as spconv
import torch
from torch import nn

from tests.helpers import randomize_bn


# ----------------------------------------------------------------------------- dense
class ResBlock(nn.Module):
    """conv-bn-relu-conv-bn, ``+ x``, relu (the add is an op site)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class Merge(nn.Module):
    """ConvTranspose upsampling and a lateral 1x1 conv, concatenated (the cat is an op site)."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.up = nn.ConvTranspose2d(c, 6, 2, stride=2)
        self.lateral = nn.Conv2d(c, 6, 1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lateral = nn.functional.interpolate(self.lateral(x), scale_factor=2.0)
        return self.head(torch.cat([self.up(x), lateral], 1))


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = ResBlock(8)
        self.merge = Merge(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.block(self.stem(x)))


def build_dense(seed: int = 0) -> DenseNet:
    torch.manual_seed(seed)
    model = DenseNet().eval()
    randomize_bn(model, seed)
    return model


def dense_batches(count: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=generator) for _ in range(count)]


DENSE_RECIPE = {
    "recipe": "test-dense", "version": "1.2.3",
    "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d", "BatchNorm2d"]}, {"block": "tests.export.models:ResBlock"}],
    "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}},
              {"select": "block", "ops": {"add": "act"}},
              {"select": "merge", "ops": {"cat": "act"}}],
    "calibration": {"method": "max"},
}


def dense_recipe(**changes) -> dict:
    recipe = copy.deepcopy(DENSE_RECIPE)
    recipe.update(changes)
    return recipe


# ----------------------------------------------------------------------------- sparse
class SparseBlock(spconv.SparseModule):
    """CenterPoint's SparseBasicBlock: conv1-bn1-relu-conv2-bn2, ``+ identity``, relu."""

    def __init__(self, c: int, key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(c, c, 3, padding=1, bias=False, indice_key=key)
        self.bn1 = nn.BatchNorm1d(c)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(c, c, 3, padding=1, bias=False, indice_key=key)
        self.bn2 = nn.BatchNorm1d(c)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features))
        out = out.replace_feature(out.features + x.features)
        return out.replace_feature(self.relu(out.features))


class TinyEncoder(nn.Module):
    """(voxel_features, coors, batch_size) -> dense BEV, like CenterPoint's encoder.

    ``layout="zyx"``: coors are (batch, z, y, x) and the output is ``dense().view(N, C*D, H, W)``;
    ``layout="xyz"``: coors are (batch, x, y, z) and the output is
    ``dense().permute(0, 1, 4, 2, 3).view(N, C*D, H, W)`` (BEVFusion's encoder).
    A downsampling conv and the inverse conv that reuses its rulebook end in a U-Net style add.
    """

    def __init__(self, layout: str = "zyx", channels: int = 8, shape=(9, 16, 16)):
        super().__init__()
        self.layout = layout
        self.sparse_shape = list(shape) if layout == "zyx" else list(reversed(shape))
        c = channels
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(4, c, 3, padding=1, bias=False, indice_key="subm1"), nn.BatchNorm1d(c), nn.ReLU())
        self.block = SparseBlock(c, "subm1")
        self.down = spconv.SparseSequential(
            spconv.SparseConv3d(c, c, 3, stride=2, padding=1, bias=False, indice_key="down1"),
            nn.BatchNorm1d(c), nn.ReLU())
        self.up = spconv.SparseInverseConv3d(c, c, 3, indice_key="down1", bias=False)
        self.out = spconv.SparseSequential(
            spconv.SparseConv3d(c, c, 3, stride=(2, 1, 1) if layout == "zyx" else (1, 1, 2), padding=1, bias=False,
                                indice_key="out"),
            nn.BatchNorm1d(c), nn.ReLU())

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, coors.int(), self.sparse_shape, int(batch_size))
        x = self.block(self.conv_input(x))
        up = self.up(self.down(x))
        x = x.replace_feature(x.features + up.features)
        dense = self.out(x).dense()
        if self.layout == "xyz":
            dense = dense.permute(0, 1, 4, 2, 3).contiguous()
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


class TinyDetector(nn.Module):
    """``encoder`` (sparse) then ``bev`` (a dense 1x1 head)."""

    def __init__(self, layout: str = "zyx"):
        super().__init__()
        self.encoder = TinyEncoder(layout)
        depth = 5
        self.bev = nn.Sequential(nn.Conv2d(8 * depth, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        return self.bev(self.encoder(voxel_features, coors, batch_size))


def build_sparse(layout: str = "zyx", seed: int = 0) -> TinyDetector:
    torch.manual_seed(seed)
    model = TinyDetector(layout).eval()
    randomize_bn(model, seed)
    return model


def voxel_batches(layout: str = "zyx", count: int = 2, batch: int = 2, points: int = 250, seed: int = 0,
                  shape=(9, 16, 16)) -> list[dict]:
    """Batches {voxel_features, coors, batch_size} with unique voxels; coors in ``layout`` order."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for index in range(count):
        rows = []
        for b in range(batch):
            n = points + 40 * index  # later batches have more voxels (output_bound comes from the largest)
            coords = torch.unique(torch.stack([torch.randint(0, s, (n,), generator=generator) for s in shape], 1), dim=0)
            if layout == "xyz":
                coords = coords.flip(1)
            rows.append(torch.cat([torch.full((len(coords), 1), b), coords], 1))
        coors = torch.cat(rows).int()
        out.append({"voxel_features": torch.randn(len(coors), 4, generator=generator), "coors": coors,
                    "batch_size": batch})
    return out


def forward_batch(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["voxel_features"], batch["coors"], batch["batch_size"])


SPARSE_RECIPE = {
    "recipe": "test-sparse", "version": "0.1.0",
    "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["SubMConv3d|SparseConv3d", "BatchNorm1d", "ReLU"]},
             {"block": "tests.export.models:SparseBlock", "with": {"fuse_relu": True}}],
    "rules": [{"select": {"type": ["SubMConv3d", "SparseConv3d", "SparseInverseConv3d"]},
               "quantize": {"input": "act", "weight": "w"}},
              {"select": "encoder", "ops": {"add": "act"}},
              {"select": {"type": "tests.export.models:SparseBlock"}, "ops": {"add": "act"}},
              {"select": {"type": "Conv2d"}, "quantize": {"input": "act", "weight": "w"}}],
    "share": [["encoder.block.conv1.input", "encoder.block.add0"],  # block input: conv1 + residual add
              ["encoder.down.0.input", "encoder.add0"]],            # block output: down conv + U-Net add
    "disable": ["encoder.conv_input.*"],
    "calibration": {"method": "max"},
}


def sparse_recipe(**changes) -> dict:
    recipe = copy.deepcopy(SPARSE_RECIPE)
    recipe.update(changes)
    return recipe


# ----------------------------------------------------------------------------- 1x1 sparse convs
class SkipUNet(nn.Module):
    """A sparse U-Net whose skip and bottleneck convs are 1x1 SubM convs (spconv's kernel-size-1 path).

    (voxel_features, coors, batch_size) -> dense ``[N, C*D, H, W]``, zyx coordinates.
    """

    def __init__(self, shape=(9, 16, 16)):
        super().__init__()
        self.sparse_shape = list(shape)
        self.stem = spconv.SparseSequential(
            spconv.SubMConv3d(4, 8, 3, padding=1, bias=False, indice_key="s1"), nn.BatchNorm1d(8), nn.ReLU())
        self.skip = spconv.SparseSequential(spconv.SubMConv3d(8, 12, 1, bias=False), nn.BatchNorm1d(12))
        self.down = spconv.SparseSequential(
            spconv.SparseConv3d(8, 16, 3, stride=2, padding=1, bias=False, indice_key="d1"), nn.BatchNorm1d(16),
            nn.ReLU())
        self.mid = spconv.SparseSequential(spconv.SubMConv3d(16, 16, 1, bias=False), nn.BatchNorm1d(16), nn.ReLU())
        self.up = spconv.SparseSequential(spconv.SparseInverseConv3d(16, 12, 3, indice_key="d1", bias=False),
                                          nn.BatchNorm1d(12))
        self.head = spconv.SparseSequential(spconv.SubMConv3d(12, 6, 1, bias=False), nn.BatchNorm1d(6), nn.ReLU())

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, coors.int(), self.sparse_shape, int(batch_size))
        x = self.stem(x)
        skip = self.skip(x)
        up = self.up(self.mid(self.down(x)))
        x = skip.replace_feature(torch.relu(skip.features + up.features))
        dense = self.head(x).dense()
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


def build_skip_unet(seed: int = 0) -> SkipUNet:
    torch.manual_seed(seed)
    model = SkipUNet().eval()
    randomize_bn(model, seed)
    return model


SKIP_UNET_RECIPE = {
    "recipe": "test-skip-unet", "version": "0.1.0",
    "quantizers": {"act": {}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["SubMConv3d|SparseConv3d|SparseInverseConv3d", "BatchNorm1d", "ReLU"]},
             {"pattern": ["SubMConv3d|SparseInverseConv3d", "BatchNorm1d"]}],
    "rules": [{"select": {"type": ["SubMConv3d", "SparseConv3d", "SparseInverseConv3d"]},
               "quantize": {"input": "act", "weight": "w"}}],
    "share": [["skip.0.input", "down.0.input"]],  # one int8 tensor (stem's output), one scale
    "disable": ["stem.*"],
    "calibration": {"method": "max"},
}


# ----------------------------------------------------------------------------- zoo recipes
def prepared_zoo_recipe(name: str, overrides: list[str]):
    """``recipes/<name>.yaml`` loaded with ``overrides``, its model built and prepared (fused, quantized,
    calibrated) on its calibration data: ``(loaded, model, batches, forward)``; skips without the checkpoint."""
    import pytest

    from recipe_engine import data as data_mod
    from recipe_engine.pipeline import prepare
    from recipe_engine.recipe.loader import load_recipe
    from recipe_engine.zoo.checkpoint import checkpoint_path
    from tests.conftest import RECIPES

    if not checkpoint_path(name.split("_")[0]).is_file():
        pytest.skip(f"zoo checkpoint of {name} is not available")
    loaded = load_recipe(RECIPES / f"{name}.yaml", overrides=overrides)
    model = data_mod.build_model(loaded)
    batches = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)
    prepare(model, loaded, batches, forward)
    return loaded, model, batches, forward
