"""Small real models and data used across tests (no mocks: real torch, spconv, pytorch-quantization)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import spconv.pytorch as spconv
import torch
from torch import nn


def random_sparse_input(channels: int = 4, shape=(12, 16, 16), count: int = 300, batch: int = 2,
                        seed: int = 0) -> spconv.SparseConvTensor:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        coords = torch.stack([torch.randint(0, s, (count,), generator=generator) for s in shape], 1)
        coords = torch.unique(coords, dim=0)
        rows.append(torch.cat([torch.full((len(coords), 1), b), coords], 1))
    indices = torch.cat(rows).int()
    features = torch.randn(len(indices), channels, generator=generator)
    return spconv.SparseConvTensor(features, indices, list(shape), batch)


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)


class ResidualSparseBlock(spconv.SparseModule):
    """A CenterPoint-style sparse basic block: conv-bn-relu-conv-bn + identity, relu."""

    def __init__(self, channels: int, key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=key)
        self.bn1 = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=key)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x):
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features))
        out = out.replace_feature(out.features + identity)
        return out.replace_feature(self.relu(out.features))


class TinySparseNet(nn.Module):
    def __init__(self, channels: int = 8):
        super().__init__()
        self.stem = spconv.SparseSequential(
            spconv.SubMConv3d(4, channels, 3, padding=1, bias=False, indice_key="s0"),
            nn.BatchNorm1d(channels), nn.ReLU())
        self.block = ResidualSparseBlock(channels, "s0")
        self.down = spconv.SparseSequential(
            spconv.SparseConv3d(channels, channels, 3, stride=2, padding=1, bias=False, indice_key="d1"),
            nn.BatchNorm1d(channels), nn.ReLU())

    def forward(self, x):
        return self.down(self.block(self.stem(x))).dense()


class TinyDenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6), nn.ReLU())
        self.lateral = nn.Conv2d(8, 6, 1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        up = self.up(self.stem(x))
        lateral = nn.functional.interpolate(self.lateral(self.stem(x)), scale_factor=2.0)
        return self.head(torch.cat([up, lateral], 1))


# ----------------------------------------------------------------------------- recipe factories
def build_dense(seed: int = 0) -> TinyDenseNet:
    """A TinyDenseNet with non-trivial BN statistics (a `model.factory` for test recipes)."""
    torch.manual_seed(seed)
    model = TinyDenseNet().eval()
    randomize_bn(model, seed)
    return model


def dense_batches(count: int = 4, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=generator) for _ in range(count)]


def output_energy(model: nn.Module, batches) -> dict[str, float]:
    """A stand-in metric: mean squared output (deterministic; changes when quantization changes)."""
    total = sum(float(model(b).square().mean()) for b in batches)
    return {"energy": total / len(batches)}


@contextlib.contextmanager
def upstream_on_cpu() -> Iterator[None]:
    """Test-only: run pytorch-quantization's CUDA-bound math on CPU as a reference (``.cuda()`` returns
    the tensor itself; one torch thread, since upstream's many tiny ops stall in OpenMP on a busy
    2-core machine; results are unaffected)."""
    original, threads = torch.Tensor.cuda, torch.get_num_threads()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]
        torch.set_num_threads(threads)
