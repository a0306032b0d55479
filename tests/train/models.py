"""Small real models, data and losses for the QAT tests (factories referenced by test recipes)."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers import TinyDenseNet, TinySparseNet, random_sparse_input, randomize_bn


def build_dense(seed: int = 0) -> TinyDenseNet:
    torch.manual_seed(seed)
    model = TinyDenseNet().eval()
    randomize_bn(model, seed)
    return model


def _teacher() -> TinyDenseNet:
    """The function the student learns: the same architecture with other weights."""
    return build_dense(seed=7)


def regression_data(count: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches {"x": [2, 3, 8, 8], "y": teacher(x) [2, 4, 16, 16]}."""
    generator = torch.Generator().manual_seed(seed)
    teacher = _teacher()
    out = []
    with torch.no_grad():
        for _ in range(count):
            x = torch.randn(2, 3, 8, 8, generator=generator)
            out.append({"x": x, "y": teacher(x)})
    return out


def forward(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["x"])


def mse(output: torch.Tensor, batch: dict) -> torch.Tensor:
    return torch.nn.functional.mse_loss(output, batch["y"])


def loss_dict(output: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
    """A dict of losses, one of them a per-level list (like mmdet heads return)."""
    diff = output - batch["y"]
    return {"mse": diff.square().mean(), "l1": [diff[:, :2].abs().mean(), diff[:, 2:].abs().mean()]}


def energy(model: nn.Module, batches) -> dict[str, float]:
    """Evaluate metric: negative validation MSE (higher is better) and the MSE itself."""
    with torch.no_grad():
        total = sum(float(mse(forward(model, b), b)) for b in batches) / len(batches)
    return {"neg_mse": -total, "mse": total}


class SelfLossNet(nn.Module):
    """A model whose forward returns its own dict of losses when given targets (mmdet style)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_dense()

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        out = self.net(x)
        if y is None:
            return out
        return {"loss_mse": (out - y).square().mean(), "loss_abs": (out - y).abs().mean()}


def build_self_loss() -> SelfLossNet:
    return SelfLossNet().eval()


def self_loss_forward(model: nn.Module, batch: dict):
    return model(batch["x"], batch["y"])


# ----------------------------------------------------------------------------- sparse
def build_sparse(seed: int = 0) -> TinySparseNet:
    torch.manual_seed(seed)
    model = TinySparseNet().eval()
    randomize_bn(model, seed)
    return model


def sparse_data(count: int = 4, seed: int = 0) -> list[dict]:
    """Sparse inputs with dense regression targets from another TinySparseNet."""
    teacher = build_sparse(seed=5)
    out = []
    with torch.no_grad():
        for i in range(count):
            x = random_sparse_input(count=120, seed=seed * 100 + i)
            out.append({"x": x, "y": teacher(x)})
    return out


def noisy_mse(output: torch.Tensor, batch: dict) -> torch.Tensor:
    """MSE plus a tiny random term drawn from torch, numpy and random (tests RNG restore on resume)."""
    import random

    import numpy as np

    noise = torch.rand(()) * 1e-3 + float(np.random.rand()) * 1e-3 + random.random() * 1e-3
    return mse(output, batch) + noise


def shuffled_data(count: int = 4, seed: int = 1) -> torch.utils.data.DataLoader:
    """A shuffling DataLoader over ready-made batches (its order comes from torch's global RNG)."""
    return torch.utils.data.DataLoader(regression_data(count, seed), batch_size=None, shuffle=True)
