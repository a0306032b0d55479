"""PointPillars-lite: pillar feature net on raw points, BEV pseudo-image, SECOND + FPN, centre head.

The layout of PointPillars (Lang et al., 2019) with a CenterPoint-style head, at zoo size:

* ``pillar_net`` (:class:`PillarFeatureNet`): every point is decorated as PointPillars does, with
  its raw, unnormalised features (x, y, z in metres out to 51.2 m, intensity 0-255) plus the
  offsets to the mean of its pillar's points (x_c, y_c, z_c) and to the pillar's centre (x_p,
  y_p): 9 features. ``pillar_net.pfn`` (Linear(9, C) + BatchNorm1d + ReLU) runs on every point
  and a max over each pillar's points gives the pillar feature (dynamic pillars, no padding).
* ``scatter`` (:class:`PillarScatter`): pillar features to a [B, C, 128, 128] BEV pseudo-image
  (about 9 % of the cells hold a pillar; the rest are zeros).
* ``bev``: SECOND backbone (three strided Conv2d/BN/ReLU stages, 64 -> 32 -> 16 cells),
  SECONDFPN neck (ConvTranspose2d to 64 x 64 + ``torch.cat``), centre heatmap head ->
  [B, 3 + 2, 64, 64] (1.6 m cells).

Recipe entry points (``recipe_engine.zoo.pointpillars:<name>``): :func:`build`,
:func:`forward_batch`, :func:`loss`, :func:`evaluate`, :func:`train_data`,
:func:`calibration_data`, :func:`val_data`, :func:`test_data`. Layer paths: ``pillar_net.pfn.0``
(Linear), ``bev.backbone.blocks.<i>.<j>`` (Conv2d), ``bev.neck.deblocks.<i>.0`` (ConvTranspose2d),
``bev.head.shared_conv.0``, ``bev.head.task_head.{0,3}`` (Conv2d).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .bev_blocks import SECOND, SECONDFPN, CenterHead
from .checkpoint import pretrained_or_random
from .detection import NUM_CLASSES, Batch, SceneSplits, detection_loss, evaluate_detector
from .pillar_data import GRID_SIZE, OUTPUT_GRID, PC_RANGE, PILLAR_SIZE, make_batch

__all__ = [
    "PillarFeatureNet", "PillarScatter", "PointPillarsLite", "build", "calibration_data", "evaluate",
    "forward_batch", "loss", "make_batch", "test_data", "train_data", "val_data",
]

NAME = "pointpillars"
METRIC = "mAP"
VAL_SCENES = 48
VAL_BATCH = 8
NUM_POINT_FEATURES = 9  # x, y, z, intensity, x_c, y_c, z_c, x_p, y_p


class PillarFeatureNet(nn.Module):
    """Point decoration + ``pfn`` (Linear/BN/ReLU) per point + max over the points of each pillar."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.channels = channels
        self.pfn = nn.Sequential(nn.Linear(NUM_POINT_FEATURES, channels, bias=False),
                                 nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01), nn.ReLU())

    def forward(self, points: torch.Tensor, point_pillar: torch.Tensor, pillar_coors: torch.Tensor) -> torch.Tensor:
        """Points [P, 4], their pillar [P], pillars [Q, 3] (batch, y, x) -> pillar features [Q, C]."""
        num = pillar_coors.shape[0]
        xyz = points[:, :3]
        counts = torch.zeros(num, dtype=xyz.dtype, device=xyz.device).index_add_(
            0, point_pillar, torch.ones_like(xyz[:, 0]))
        mean = torch.zeros(num, 3, dtype=xyz.dtype, device=xyz.device).index_add_(0, point_pillar, xyz)
        mean = mean / counts.clamp(min=1.0)[:, None]
        yx = pillar_coors[:, 1:].to(xyz.dtype)
        centre = torch.stack([yx[:, 1] * PILLAR_SIZE + (PC_RANGE[0] + PILLAR_SIZE / 2),
                              yx[:, 0] * PILLAR_SIZE + (PC_RANGE[1] + PILLAR_SIZE / 2)], dim=1)
        decorated = torch.cat([points, xyz - mean[point_pillar], xyz[:, :2] - centre[point_pillar]], dim=1)
        per_point = self.pfn(decorated)  # [P, C], >= 0 after the ReLU
        pooled = torch.zeros(num, per_point.shape[1], dtype=per_point.dtype, device=per_point.device)
        index = point_pillar[:, None].expand_as(per_point)
        return pooled.scatter_reduce(0, index, per_point, reduce="amax", include_self=True)


class PillarScatter(nn.Module):
    """Pillar features [Q, C] -> BEV pseudo-image [B, C, 128, 128] (zeros where there is no pillar)."""

    def __init__(self, grid_size: int = GRID_SIZE) -> None:
        super().__init__()
        self.grid_size = grid_size

    def forward(self, features: torch.Tensor, pillar_coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        s = self.grid_size
        canvas = features.new_zeros(batch_size * s * s, features.shape[1])
        linear = (pillar_coors[:, 0].long() * s + pillar_coors[:, 1].long()) * s + pillar_coors[:, 2].long()
        canvas = canvas.index_copy(0, linear, features)
        return canvas.view(batch_size, s, s, -1).permute(0, 3, 1, 2).contiguous()


class PillarBEV(nn.Module):
    """``backbone`` (SECOND, 3 strided stages) -> ``neck`` (SECONDFPN to 64 x 64) -> ``head``."""

    def __init__(self, in_channels: int, num_classes: int, backbone_channels: Sequence[int],
                 layer_nums: Sequence[int], neck_channels: Sequence[int], head_channels: int) -> None:
        super().__init__()
        self.backbone = SECOND(in_channels, backbone_channels, layer_nums, (2, 2, 2))
        self.neck = SECONDFPN(backbone_channels, neck_channels, (1, 2, 4))
        self.head = CenterHead(self.neck.out_channels, num_classes, head_channels)

    def forward(self, pseudo_image: torch.Tensor) -> torch.Tensor:
        """[B, C, 128, 128] -> [B, num_classes + 2, 64, 64]."""
        return self.head(self.neck(self.backbone(pseudo_image)))


class PointPillarsLite(nn.Module):
    """``pillar_net`` -> ``scatter`` -> ``bev``."""

    def __init__(self, num_classes: int = NUM_CLASSES, pillar_channels: int = 32,
                 backbone_channels: Sequence[int] = (32, 64, 96), layer_nums: Sequence[int] = (2, 2, 2),
                 neck_channels: Sequence[int] = (32, 32, 32), head_channels: int = 48) -> None:
        super().__init__()
        self.pillar_net = PillarFeatureNet(pillar_channels)
        self.scatter = PillarScatter()
        self.bev = PillarBEV(pillar_channels, num_classes, backbone_channels, layer_nums, neck_channels,
                             head_channels)

    def forward(self, points: torch.Tensor, point_pillar: torch.Tensor, pillar_coors: torch.Tensor,
                batch_size: int) -> torch.Tensor:
        """Raw points -> [B, num_classes + 2, 64, 64] (heatmap logits, centre offset dx, dy)."""
        pillars = self.pillar_net(points, point_pillar, pillar_coors)
        return self.bev(self.scatter(pillars, pillar_coors, batch_size))


def build(pretrained: bool = False, **kwargs: Any) -> PointPillarsLite:
    """Build the model (random init); ``pretrained=True`` loads ``checkpoints/pointpillars.pt`` (strict, eval)."""
    return pretrained_or_random(PointPillarsLite(**kwargs), NAME, pretrained)


def forward_batch(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Run ``model`` on a batch from the data factories."""
    return model(batch["points"], batch["point_pillar"], batch["pillar_coors"], int(batch["batch_size"]))


def loss(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Focal heatmap loss + L1 centre-offset loss (scalar)."""
    return detection_loss(output, batch)


def evaluate(model: nn.Module, loader: Sequence[Batch]) -> dict[str, float]:
    """BEV centre-distance mAP (``"mAP"``, 0-100) and per-class APs on the 64 x 64 output grid
    (top 128 peaks per scene: ~25 objects per scene)."""
    return evaluate_detector(model, loader, forward_batch, grid=OUTPUT_GRID, top_k=128)


_SPLITS = SceneSplits(make_batch, VAL_SCENES, VAL_BATCH)
train_data = _SPLITS.train_data
calibration_data = _SPLITS.calibration_data
val_data = _SPLITS.val_data
test_data = _SPLITS.test_data


#: Training recipe used by ``python -m recipe_engine.zoo.train pointpillars``.
TRAIN: dict[str, Any] = {"steps": 1200, "lr": 3e-3, "weight_decay": 1e-2,
                         "data": {"count": 4800, "batch_size": 4}}
