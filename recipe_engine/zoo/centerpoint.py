"""CenterPoint-lite: sparse voxel encoder + SECOND/SECONDFPN + centre heatmap head.

Recipe entry points (``recipe_engine.zoo.centerpoint:<name>``): :func:`build` (pass
``pretrained=True`` for the committed trained weights), :func:`forward_batch`, :func:`loss`,
:func:`evaluate` and the data factories :func:`train_data`, :func:`calibration_data`,
:func:`val_data`. Batches are dicts of tensors (see :func:`~.lidar.collate_voxels` and
:func:`~.detection.render_targets`).

Layer paths a recipe selects: ``encoder.conv_input.0`` (SubMConv3d),
``encoder.conv{1..4}.<i>.conv{1,2}`` (SubMConv3d in SparseBasicBlocks; the residual add is in
``SparseBasicBlock.forward``), ``encoder.conv{2,3,4}.0`` and ``encoder.extra_conv.0``
(SparseConv3d), ``bev.backbone.blocks.<i>.<j>`` (Conv2d), ``bev.neck.deblocks.<i>.0``
(ConvTranspose2d; ``torch.cat`` in ``SECONDFPN.forward``), ``bev.head.shared_conv.0`` and
``bev.head.task_head.{0,3}`` (Conv2d).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .bev_blocks import CenterPointBEV
from .checkpoint import pretrained_or_random
from .detection import (
    NUM_CLASSES,
    Batch,
    SceneSplits,
    detection_loss,
    evaluate_detector,
    render_targets,
)
from .lidar import NUM_POINT_FEATURES, SPATIAL_SHAPE, collate_voxels, make_frame
from .sparse_encoder import SparseBasicBlock, SparseEncoder

__all__ = [
    "CenterPointLite", "SparseBasicBlock", "SparseEncoder", "build", "calibration_data", "evaluate",
    "forward_batch", "loss", "make_batch", "test_data", "train_data", "val_data",
]

NAME = "centerpoint"
METRIC = "mAP"
VAL_SCENES = 48
VAL_BATCH = 8


class CenterPointLite(nn.Module):
    """``encoder`` (sparse, voxels -> BEV [B, 96, 16, 16]) then ``bev`` (-> [B, 5, 32, 32])."""

    def __init__(self, num_classes: int = NUM_CLASSES, channels: Sequence[int] = (16, 32, 48, 48),
                 blocks_per_stage: int = 2, bev_channels: Sequence[int] = (48, 96), head_channels: int = 48) -> None:
        super().__init__()
        self.encoder = SparseEncoder(NUM_POINT_FEATURES, SPATIAL_SHAPE, channels, channels[-1], blocks_per_stage)
        self.bev = CenterPointBEV(self.encoder.out_channels, num_classes, bev_channels,
                                  (head_channels, head_channels), head_channels)

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Voxels -> [B, num_classes + 2, 32, 32] (heatmap logits, centre offset dx, dy)."""
        return self.bev(self.encoder(voxel_features, coors, batch_size))


def build(pretrained: bool = False, **kwargs: Any) -> CenterPointLite:
    """Build the model (random init); ``pretrained=True`` loads the committed checkpoint
    (``checkpoints/centerpoint.pt``, strict) and returns the model in eval mode."""
    return pretrained_or_random(CenterPointLite(**kwargs), NAME, pretrained)


def forward_batch(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Run ``model`` on a batch from the data factories."""
    return model(batch["voxel_features"], batch["coors"], int(batch["batch_size"]))


def loss(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Focal heatmap loss + L1 centre-offset loss (scalar)."""
    return detection_loss(output, batch)


def evaluate(model: nn.Module, loader: Sequence[Batch]) -> dict[str, float]:
    """BEV centre-distance mAP (key ``"mAP"``, 0-100) plus per-class APs."""
    return evaluate_detector(model, loader, forward_batch)


def make_batch(seeds: Sequence[int]) -> Batch:
    """Batch of the given scene seeds: voxels, padded labels and heatmap targets."""
    batch = collate_voxels(make_frame(s) for s in seeds)
    batch.update(render_targets(batch["gt_cls"], batch["gt_center"], batch["gt_size"]))
    return batch


_SPLITS = SceneSplits(make_batch, VAL_SCENES, VAL_BATCH)
train_data = _SPLITS.train_data
calibration_data = _SPLITS.calibration_data
val_data = _SPLITS.val_data
test_data = _SPLITS.test_data


#: Training recipe used by ``python -m recipe_engine.zoo.train centerpoint``.
TRAIN: dict[str, Any] = {"steps": 400, "lr": 3e-3, "weight_decay": 1e-2,
                         "data": {"count": 2000, "batch_size": 4}}
