"""Digits CNN on scikit-learn's bundled ``load_digits`` (real 8x8 handwritten digits).

Images are scaled to [0, 1], bilinearly upsampled to 16 x 16 and normalised. Fixed split
(seeded permutation): 360 test images, the remaining 1437 for training; the calibration
split is the first 256 training images (deterministic order).

Layer paths: ``stem.0`` (Conv2d), ``block1.conv1`` / ``block1.conv2`` and ``block2.*``
(Conv2d in :class:`ResidualBlock`, plain ``out + identity`` in its forward; ``block2`` has a
``downsample`` Conv2d/BN), ``fc`` (Linear).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import pretrained_or_random
from .metrics import top1

NAME = "digits"
METRIC = "top1"
NUM_TEST = 360
NUM_CALIB = 256
_SPLIT_SEED = 20240
_MEAN, _STD = 0.3, 0.4

Batch = dict[str, torch.Tensor]


class ResidualBlock(nn.Module):
    """conv1-bn1-relu-conv2-bn2, ``out + identity`` (optionally downsampled), relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out)


class DigitsNet(nn.Module):
    """``stem`` (Conv/BN/ReLU) -> ``block1`` -> ``pool`` -> ``block2`` (stride 2) -> ``avgpool`` -> ``fc``."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = ResidualBlock(width, width)
        self.pool = nn.MaxPool2d(2)
        self.block2 = ResidualBlock(width, 2 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, 16, 16] normalised images -> [B, 10] logits."""
        x = self.pool(self.block1(self.stem(x)))
        x = self.avgpool(self.block2(x))
        return self.fc(torch.flatten(x, 1))


def build(pretrained: bool = False, **kwargs: Any) -> DigitsNet:
    """Build the model (random init); ``pretrained=True`` loads ``checkpoints/digits.pt``
    (strict) and returns the model in eval mode."""
    return pretrained_or_random(DigitsNet(**kwargs), NAME, pretrained)


@lru_cache(maxsize=1)
def _dataset() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = (x - _MEAN) / _STD
    y = torch.from_numpy(data.target.astype(np.int64))
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    return x, y, np.sort(perm[NUM_TEST:]), np.sort(perm[:NUM_TEST])


def split_indices(split: str) -> np.ndarray:
    """Dataset indices of ``train``, ``calib`` (subset of train) or ``test`` (alias ``val``)."""
    _, _, train, test = _dataset()
    if split == "train":
        return train
    if split == "calib":
        return train[:NUM_CALIB]
    if split in ("test", "val"):
        return test
    raise ValueError(f"unknown split {split!r}")


def _batches(idx: np.ndarray, batch_size: int) -> list[Batch]:
    x, y, _, _ = _dataset()
    t = torch.from_numpy(idx)
    return [{"image": x[t[i:i + batch_size]], "label": y[t[i:i + batch_size]]} for i in range(0, len(t), batch_size)]


def forward_batch(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Logits for ``batch["image"]``."""
    return model(batch["image"])


def loss(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Cross-entropy against ``batch["label"]``."""
    return F.cross_entropy(output, batch["label"])


@torch.no_grad()
def evaluate(model: nn.Module, loader: Sequence[Batch]) -> dict[str, float]:
    """Top-1 accuracy (key ``"top1"``, 0-100) in eval mode; the mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([forward_batch(model, b) for b in loader])
        labels = torch.cat([b["label"] for b in loader])
    finally:
        model.train(was_training)
    return {"top1": top1(logits, labels)}


def train_data(batch_size: int = 64, seed: int = 0, count: int | None = None) -> list[Batch]:
    """One epoch over the training split, shuffled with ``seed`` (``count`` limits images)."""
    idx = split_indices("train")
    idx = idx[np.random.default_rng(seed).permutation(len(idx))][:count]
    return _batches(idx, batch_size)


def calibration_data(count: int = NUM_CALIB, batch_size: int = 64, seed: int = 0) -> list[Batch]:
    """The first ``count`` calibration images (fixed order; ``seed`` > 0 shuffles them)."""
    idx = split_indices("calib")[:count]
    if seed:
        idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    return _batches(idx, batch_size)


def val_data(count: int | None = None, batch_size: int = 128, seed: int = 0) -> list[Batch]:
    """The fixed test split (``count`` limits images; ``seed`` is accepted for API symmetry)."""
    del seed
    return _batches(split_indices("test")[:count], batch_size)


#: Training recipe used by ``python -m recipe_engine.zoo.train digits``.
TRAIN: dict[str, Any] = {"steps": 600, "lr": 3e-3, "weight_decay": 1e-3, "data": {"batch_size": 64}}
