"""Camera branch of BEVFusion-lite: ResNet-style Bottleneck backbone, GeneralizedLSSFPN neck
and an LSS view transform to the lidar BEV grid.

Residual adds are in :meth:`Bottleneck.forward` (``out + identity``); the FPN's
``F.interpolate`` + ``torch.cat`` are in :meth:`GeneralizedLSSFPN.forward`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .bev_blocks import conv_bn_relu
from .images import CAMERA_YAWS, IMAGE_SIZE, camera_rays


class Bottleneck(nn.Module):
    """torchvision-style bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), ``out + identity``, relu."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class ResNetLite(nn.Module):
    """Stem (conv1/bn1/relu/maxpool, stride 4) + ``layer1..layer3`` of Bottlenecks.

    Returns the ``layer2`` (stride 8) and ``layer3`` (stride 16) maps.
    """

    def __init__(self, stem: int = 16, planes: Sequence[int] = (8, 16, 32), blocks: Sequence[int] = (2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = stem
        layers = []
        for i, (p, n) in enumerate(zip(planes, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            out = p * Bottleneck.expansion
            down = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            mods = [Bottleneck(inplanes, p, stride, down)] + [Bottleneck(out, p) for _ in range(n - 1)]
            layers.append(nn.Sequential(*mods))
            inplanes = out
        self.layer1, self.layer2, self.layer3 = layers
        self.out_channels = [planes[1] * Bottleneck.expansion, planes[2] * Bottleneck.expansion]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return c3, c4


class GeneralizedLSSFPN(nn.Module):
    """BEVFusion's top-down FPN: for each level from coarse to fine, upsample the coarser
    output, ``torch.cat`` it with this level's input, then ``lateral_convs[i]`` (1x1) and
    ``fpn_convs[i]`` (3x3). Returns the finest map."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 64) -> None:
        super().__init__()
        n = len(in_channels)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(n - 1):
            coarser = in_channels[i + 1] if i == n - 2 else out_channels
            self.lateral_convs.append(nn.Sequential(*conv_bn_relu(in_channels[i] + coarser, out_channels, 1)))
            self.fpn_convs.append(nn.Sequential(*conv_bn_relu(out_channels, out_channels, 3)))
        self.out_channels = out_channels

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            up = F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([feats[i], up], dim=1)
            x = self.lateral_convs[i](x)
            x = self.fpn_convs[i](x)
        return x


class CameraEncoder(nn.Module):
    """``backbone`` + ``neck``: images [B, N, 3, H, W] -> features [B, N, C, H/8, W/8]."""

    def __init__(self, out_channels: int = 64) -> None:
        super().__init__()
        self.backbone = ResNetLite()
        self.neck = GeneralizedLSSFPN(self.backbone.out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, n, c, h, w = images.shape
        x = self.neck(self.backbone(images.reshape(b * n, c, h, w)))
        return x.reshape(b, n, *x.shape[1:])


def frustum_bev_index(depths: np.ndarray, feat_hw: tuple[int, int], stride: int, bev_size: int,
                      bev_min: float, bev_cell: float) -> np.ndarray:
    """BEV cell index of every frustum point [N, D, h, w] (``bev_size**2`` = outside the grid).

    Frustum point (camera n, depth bin d, feature pixel (i, j)) lies on the ray through the
    centre of that feature cell at distance ``depths[d]`` along the optical axis.
    """
    h, w = feat_hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (u + 0.5) * stride, (v + 0.5) * stride
    out = np.empty((len(CAMERA_YAWS), len(depths), h, w), np.int64)
    for n, yaw in enumerate(CAMERA_YAWS):
        d = camera_rays(yaw, u, v)  # forward component 1 -> scale by depth
        pts = depths[:, None, None, None] * d[None]
        ix = np.floor((pts[..., 0] - bev_min) / bev_cell).astype(np.int64)
        iy = np.floor((pts[..., 1] - bev_min) / bev_cell).astype(np.int64)
        inside = (ix >= 0) & (ix < bev_size) & (iy >= 0) & (iy < bev_size)
        out[n] = np.where(inside, iy * bev_size + ix, bev_size * bev_size)
    return out


class LSSViewTransform(nn.Module):
    """Lift-splat view transform (BEVFusion ``LSSTransform``, fixed camera geometry).

    ``depthnet`` (1x1 Conv2d) predicts, per feature pixel, a softmax distribution over
    ``num_depth`` depth bins (2.5 ... 25.5 m) and ``out_channels`` context features; their
    outer product is splatted (sum-pooled with ``index_add_``) into the BEV cell of each
    frustum point, giving [B, C, 16, 16] on the lidar encoder's BEV grid (3.2 m cells over
    [-25.6, 25.6) m), then ``downsample`` (Conv2d/BN/ReLU, stride 1) refines it.
    """

    def __init__(self, in_channels: int = 64, out_channels: int = 32, num_depth: int = 24,
                 bev_size: int = 16, bev_min: float = -25.6, bev_cell: float = 3.2, stride: int = 8) -> None:
        super().__init__()
        self.num_depth, self.out_channels, self.bev_size = num_depth, out_channels, bev_size
        self.depthnet = nn.Conv2d(in_channels, num_depth + out_channels, 1)
        self.downsample = nn.Sequential(*conv_bn_relu(out_channels, out_channels, 3))
        feat_hw = (IMAGE_SIZE[0] // stride, IMAGE_SIZE[1] // stride)
        depths = 2.5 + np.arange(num_depth, dtype=np.float64)
        index = frustum_bev_index(depths, feat_hw, stride, bev_size, bev_min, bev_cell)
        self.register_buffer("bev_index", torch.from_numpy(index), persistent=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Camera features [B, N, C_in, h, w] -> camera BEV [B, out_channels, S, S]."""
        b, n, c, h, w = feats.shape
        x = self.depthnet(feats.reshape(b * n, c, h, w))
        depth = x[:, :self.num_depth].softmax(dim=1)
        context = x[:, self.num_depth:]
        frustum = depth.unsqueeze(1) * context.unsqueeze(2)  # [BN, C, D, h, w]
        frustum = frustum.reshape(b, n, self.out_channels, self.num_depth, h, w)
        frustum = frustum.permute(0, 1, 3, 4, 5, 2).reshape(b, -1, self.out_channels)
        cells = self.bev_size * self.bev_size
        bev = frustum.new_zeros(b, cells + 1, self.out_channels)
        bev = bev.index_add(1, self.bev_index.reshape(-1), frustum)[:, :cells]
        bev = bev.transpose(1, 2).reshape(b, self.out_channels, self.bev_size, self.bev_size)
        return self.downsample(bev)
