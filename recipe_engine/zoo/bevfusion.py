"""BEVFusion-lite: lidar sparse encoder + camera (ResNet/LSSFPN/LSS) fused in BEV.

``forward(voxel_features, coors, batch_size, images)``: ``lidar`` (:class:`SparseEncoder`) gives
the lidar BEV [B, 96, 16, 16]; ``camera`` encodes images [B, 2, 3, 64, 176] to
[B, 2, 64, 8, 22]; ``vtransform`` (:class:`LSSViewTransform`) lifts them to the same BEV grid
[B, 32, 16, 16]; ``bev`` fuses (``torch.cat`` in :meth:`ConvFuser.forward`), decodes
(SECOND + SECONDFPN with ``torch.cat``) and predicts [B, 5, 32, 32] like CenterPoint-lite.

Same recipe entry points as :mod:`.centerpoint`; batches add ``images`` (normalised).
Residual adds: ``SparseBasicBlock.forward`` (lidar.conv1..conv4) and ``Bottleneck.forward``
(camera.backbone.layer1..layer3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .bev_blocks import SECOND, SECONDFPN, CenterHead, conv_bn_relu
from .camera import Bottleneck, CameraEncoder, LSSViewTransform
from .checkpoint import pretrained_or_random
from .detection import (
    NUM_CLASSES,
    Batch,
    SceneSplits,
    detection_loss,
    evaluate_detector,
    render_targets,
)
from .images import normalize, render
from .lidar import NUM_POINT_FEATURES, SPATIAL_SHAPE, collate_voxels, make_frame
from .sparse_encoder import SparseBasicBlock, SparseEncoder

__all__ = [
    "BEVFusionLite", "Bottleneck", "ConvFuser", "SparseBasicBlock", "build", "calibration_data", "evaluate",
    "forward_batch", "loss", "make_batch", "test_data", "train_data", "val_data",
]

NAME = "bevfusion"
METRIC = "mAP"
VAL_SCENES = 48
VAL_BATCH = 8


class ConvFuser(nn.Sequential):
    """BEVFusion ConvFuser: ``torch.cat([camera_bev, lidar_bev])`` -> Conv2d/BN/ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(*conv_bn_relu(in_channels, out_channels, 3))

    def forward(self, camera_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([camera_bev, lidar_bev], dim=1))


class BEVDecoder(nn.Module):
    """``backbone`` (SECOND) -> ``neck`` (SECONDFPN)."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (48, 96), neck_channels: int = 48) -> None:
        super().__init__()
        self.backbone = SECOND(in_channels, channels, (2, 2), (1, 2))
        self.neck = SECONDFPN(channels, (neck_channels, neck_channels), (2, 4))
        self.out_channels = self.neck.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))


class FusionBEV(nn.Module):
    """``fuser`` -> ``decoder`` -> ``head``."""

    def __init__(self, camera_channels: int, lidar_channels: int, fused_channels: int = 96,
                 num_classes: int = NUM_CLASSES, head_channels: int = 48) -> None:
        super().__init__()
        self.fuser = ConvFuser(camera_channels + lidar_channels, fused_channels)
        self.decoder = BEVDecoder(fused_channels, (head_channels, 2 * head_channels), head_channels)
        self.head = CenterHead(self.decoder.out_channels, num_classes, head_channels)

    def forward(self, camera_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:
        """Camera BEV [B, 32, 16, 16] + lidar BEV [B, 96, 16, 16] -> [B, C + 2, 32, 32]."""
        return self.head(self.decoder(self.fuser(camera_bev, lidar_bev)))


class BEVFusionLite(nn.Module):
    """Children ``lidar``, ``camera``, ``vtransform``, ``bev``."""

    def __init__(self, num_classes: int = NUM_CLASSES, lidar_channels: Sequence[int] = (16, 32, 48, 48),
                 camera_channels: int = 64, camera_bev_channels: int = 32) -> None:
        super().__init__()
        self.lidar = SparseEncoder(NUM_POINT_FEATURES, SPATIAL_SHAPE, lidar_channels, lidar_channels[-1])
        self.camera = CameraEncoder(camera_channels)
        self.vtransform = LSSViewTransform(camera_channels, camera_bev_channels)
        self.bev = FusionBEV(camera_bev_channels, self.lidar.out_channels, 96, num_classes)

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int,
                images: torch.Tensor) -> torch.Tensor:
        """Voxels + normalised images [B, N, 3, H, W] -> [B, num_classes + 2, 32, 32]."""
        lidar_bev = self.lidar(voxel_features, coors, batch_size)
        camera_bev = self.vtransform(self.camera(images))
        return self.bev(camera_bev, lidar_bev)


def build(pretrained: bool = False, **kwargs: Any) -> BEVFusionLite:
    """Build the model (random init); ``pretrained=True`` loads ``checkpoints/bevfusion.pt``
    (strict) and returns the model in eval mode."""
    return pretrained_or_random(BEVFusionLite(**kwargs), NAME, pretrained)


def forward_batch(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Run ``model`` on a batch from the data factories."""
    return model(batch["voxel_features"], batch["coors"], int(batch["batch_size"]), batch["images"])


def loss(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Focal heatmap loss + L1 centre-offset loss (scalar)."""
    return detection_loss(output, batch)


def evaluate(model: nn.Module, loader: Sequence[Batch]) -> dict[str, float]:
    """BEV centre-distance mAP (key ``"mAP"``, 0-100) plus per-class APs."""
    return evaluate_detector(model, loader, forward_batch)


def make_batch(seeds: Sequence[int]) -> Batch:
    """Batch of the given scene seeds: voxels, normalised camera images, labels, targets."""
    frames = [make_frame(s) for s in seeds]
    batch = collate_voxels(frames)
    batch["images"] = torch.from_numpy(np.stack([normalize(render(f.scene)) for f in frames]))
    batch.update(render_targets(batch["gt_cls"], batch["gt_center"], batch["gt_size"]))
    return batch


_SPLITS = SceneSplits(make_batch, VAL_SCENES, VAL_BATCH)
train_data = _SPLITS.train_data
calibration_data = _SPLITS.calibration_data
val_data = _SPLITS.val_data
test_data = _SPLITS.test_data


#: Training recipe used by ``python -m recipe_engine.zoo.train bevfusion``.
TRAIN: dict[str, Any] = {"steps": 400, "lr": 3e-3, "weight_decay": 1e-2,
                         "data": {"count": 2000, "batch_size": 4}}
