"""Shared detector plumbing: heatmap targets, CenterNet loss, lazy batch lists, evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .geometry import CLASSES
from .lidar import split_seeds
from .metrics import BEVGrid, bev_center_map, decode_centers

NUM_CLASSES = len(CLASSES)
OUTPUT_GRID = BEVGrid(x_min=-25.6, y_min=-25.6, cell=1.6, size=32)

Batch = dict[str, torch.Tensor]


def render_targets(gt_cls: torch.Tensor, gt_center: torch.Tensor, gt_size: torch.Tensor,
                   grid: BEVGrid = OUTPUT_GRID) -> dict[str, torch.Tensor]:
    """CenterNet targets on the output grid from padded labels (``gt_cls`` -1 = padding).

    Returns ``heatmap`` [B, C, S, S] (Gaussian splats, exactly 1 at centre cells), ``offset``
    [B, 2, S, S] (sub-cell centre position in cells) and ``offset_mask`` [B, 1, S, S].
    """
    b = gt_cls.shape[0]
    s = grid.size
    heat = np.zeros((b, NUM_CLASSES, s, s), np.float32)
    offset = np.zeros((b, 2, s, s), np.float32)
    mask = np.zeros((b, 1, s, s), np.float32)
    yy, xx = np.mgrid[0:s, 0:s]
    for i in range(b):
        for c, (x, y), (length, width) in zip(gt_cls[i].tolist(), gt_center[i].tolist(),
                                              gt_size[i].tolist(), strict=True):
            if c < 0:
                continue
            fx, fy = (x - grid.x_min) / grid.cell, (y - grid.y_min) / grid.cell
            ix, iy = int(np.floor(fx)), int(np.floor(fy))
            if not (0 <= ix < s and 0 <= iy < s):
                continue
            radius = max(1, int(round(0.5 * max(length, width) / grid.cell)))
            sigma = (2 * radius + 1) / 6.0
            g = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma * sigma))
            g[(np.abs(xx - ix) > radius) | (np.abs(yy - iy) > radius)] = 0.0
            heat[i, c] = np.maximum(heat[i, c], g)
            offset[i, :, iy, ix] = (fx - ix, fy - iy)
            mask[i, 0, iy, ix] = 1.0
    return {"heatmap": torch.from_numpy(heat), "offset": torch.from_numpy(offset),
            "offset_mask": torch.from_numpy(mask)}


def detection_loss(output: torch.Tensor, batch: Batch, offset_weight: float = 1.0) -> torch.Tensor:
    """CenterNet focal loss on the heatmap logits + masked L1 on the centre offset."""
    target = batch["heatmap"]
    logits = output[:, :NUM_CLASSES].float()
    log_p = F.logsigmoid(logits).clamp(min=np.log(1e-4))
    log_1mp = F.logsigmoid(-logits).clamp(min=np.log(1e-4))
    p = torch.sigmoid(logits)
    pos = target.eq(1.0).float()
    pos_loss = (log_p * (1 - p) ** 2 * pos).sum()
    neg_loss = (log_1mp * p**2 * (1 - target) ** 4 * (1 - pos)).sum()
    num_pos = pos.sum().clamp(min=1.0)
    heat_loss = -(pos_loss + neg_loss) / num_pos
    mask = batch["offset_mask"]
    off = output[:, NUM_CLASSES:NUM_CLASSES + 2].float()
    off_loss = (F.l1_loss(off, batch["offset"], reduction="none") * mask).sum() / mask.sum().clamp(min=1.0)
    return heat_loss + offset_weight * off_loss


class LazyBatches(Sequence[Batch]):
    """Re-iterable, indexable sequence of batches built on demand from scene-seed chunks.

    Batch ``i`` is ``make_batch(chunks[i])``; with ``cache=True`` each batch is built once.
    """

    def __init__(self, chunks: Sequence[Sequence[int]], make_batch: Callable[[Sequence[int]], Batch],
                 cache: bool = False) -> None:
        self.chunks = [list(c) for c in chunks]
        self._make = make_batch
        self._cache: dict[int, Batch] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int | slice) -> Batch | list[Batch]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._cache is None:
            return self._make(self.chunks[i])
        if i not in self._cache:
            self._cache[i] = self._make(self.chunks[i])
        return self._cache[i]

    def __iter__(self) -> Iterator[Batch]:
        for i in range(len(self)):
            yield self[i]


def chunk(seeds: Sequence[int], batch_size: int) -> list[list[int]]:
    """Split ``seeds`` into consecutive chunks of ``batch_size`` (last one may be shorter)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return [list(seeds[i:i + batch_size]) for i in range(0, len(seeds), batch_size)]


@torch.no_grad()
def evaluate_detector(model: nn.Module, loader: Sequence[Batch],
                      forward_batch: Callable[[nn.Module, Batch], torch.Tensor], grid: BEVGrid = OUTPUT_GRID,
                      top_k: int = 64) -> dict[str, float]:
    """Run ``model`` in eval mode over ``loader`` and return BEV centre mAP (``"mAP"``, [0, 100])
    plus per-class APs (``"AP_car"`` ...), keeping the ``top_k`` peaks per scene of the ``grid``
    output map. The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    dets, gt_cls, gt_center = [], [], []
    try:
        for batch in loader:
            dets += decode_centers(forward_batch(model, batch), NUM_CLASSES, grid, top_k=top_k)
            for c, ctr in zip(batch["gt_cls"].numpy(), batch["gt_center"].numpy(), strict=True):
                gt_cls.append(c[c >= 0])
                gt_center.append(ctr[c >= 0])
    finally:
        model.train(was_training)
    result = bev_center_map(dets, gt_cls, gt_center, NUM_CLASSES)
    return {("AP_" + CLASSES[int(k[3:])] if k.startswith("AP_") else k): v for k, v in result.items()}


class SceneSplits:
    """The train / calibration / validation / test data factories of one detector, over synthetic scenes.

    ``make_batch(seeds)`` builds one batch; the splits use disjoint seed ranges. The bound methods are
    what recipes name (``recipe_engine.zoo.centerpoint:calibration_data``).
    """

    def __init__(self, make_batch: Callable[[Sequence[int]], Batch], val_scenes: int = 48, val_batch: int = 8):
        self.make_batch = make_batch
        self.val_scenes = val_scenes
        self.val_batch = val_batch

    def _data(self, split: str, count: int, batch_size: int, seed: int, cache: bool) -> LazyBatches:
        return LazyBatches(chunk(split_seeds(split, count, seed), batch_size), self.make_batch, cache=cache)

    def train_data(self, count: int = 2048, batch_size: int = 4, seed: int = 0, cache: bool = False) -> LazyBatches:
        """``count`` training scenes in batches (built lazily; not cached by default)."""
        return self._data("train", count, batch_size, seed, cache)

    def calibration_data(self, count: int = 64, batch_size: int = 4, seed: int = 0, cache: bool = True) -> LazyBatches:
        """``count`` calibration scenes (disjoint from train and val) in batches."""
        return self._data("calib", count, batch_size, seed, cache)

    def val_data(self, count: int | None = None, batch_size: int | None = None, seed: int = 0,
                 cache: bool = True) -> LazyBatches:
        """The held-out validation split (defaults reproduce the recorded metric)."""
        return self._data("val", count or self.val_scenes, batch_size or self.val_batch, seed, cache)

    def test_data(self, count: int | None = None, batch_size: int | None = None, seed: int = 0,
                  cache: bool = True) -> LazyBatches:
        """The held-out test split (its own seed range, as large as validation by default): the split a
        run reports on when ``tune:`` or ``keep_best`` selected on validation."""
        return self._data("test", count or self.val_scenes, batch_size or self.val_batch, seed, cache)
