"""Small real models, recipes and data for the PTQ tests (real torch, spconv and both backends)."""

from __future__ import annotations

import copy

import spconv.pytorch as spconv
import torch
from torch import nn

from recipe_engine.pipeline import prepare
from tests.helpers import random_sparse_input


def dense_net(seed: int = 0) -> nn.Module:
    """conv-ReLU-conv-ReLU-pool-linear with varied per-channel ranges (as trained nets have)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():  # channel ranges that differ by 10x: what equalisation is for
        model[0].weight.mul_(torch.logspace(-0.5, 0.5, 16).reshape(-1, 1, 1, 1))
        model[0].bias.mul_(0.1)
    return model.eval()


def dense_batches(count: int = 4, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 12, 12, generator=generator) for _ in range(count)]


class SparseNet(nn.Module):
    """SubM 3x3x3 -> ReLU -> SubM 1x1x1 (spconv's ``features @ weight.reshape(I, O)`` path) -> ReLU -> SubM 3x3x3."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = spconv.SparseSequential(
            spconv.SubMConv3d(4, 16, 3, padding=1, bias=True, indice_key="a"), nn.ReLU(),
            spconv.SubMConv3d(16, 12, 1, bias=True, indice_key="b"), nn.ReLU(),
            spconv.SubMConv3d(12, 8, 3, padding=1, bias=True, indice_key="a"))
        with torch.no_grad():
            self.net[0].weight.mul_(torch.logspace(-0.5, 0.5, 16).reshape(-1, 1, 1, 1, 1))
            self.net[0].bias.mul_(0.1)
            self.net[2].bias.mul_(0.1)
        self.eval()

    def forward(self, features, indices, batch_size):
        x = spconv.SparseConvTensor(features, indices, [12, 16, 16], int(batch_size))
        return self.net(x).features


def sparse_batches(count: int = 3, seed: int = 0) -> list[dict]:
    out = []
    for i in range(count):
        x = random_sparse_input(seed=seed * 100 + i)
        features = x.features.abs() + 0.5  # positive, correlated channels (as point features are)
        out.append({"features": features, "indices": x.indices, "batch_size": x.batch_size})
    return out


def recipe(weight_bits: int = 4, backend: str = "pytorch-quantization", types=("Conv2d", "Linear"),
           per_channel: bool = True, method: str = "mse", ptq: list | None = None) -> dict:
    return {
        "recipe": "ptq-test", "version": "1.0.0", "backend": backend,
        "quantizers": {"act": {"num_bits": 8, "calibrator": "histogram"},
                       "w": {"num_bits": weight_bits, "per_channel": per_channel}},
        "rules": [{"select": {"type": list(types)}, "quantize": {"input": "act", "weight": "w"}}],
        "calibration": {"method": method},
        "ptq": ptq or [],
    }


def quantized(model: nn.Module, spec: dict, batches: list, forward=None) -> nn.Module:
    return prepare(copy.deepcopy(model), spec, batches, forward)
