"""Dense BEV blocks shared by the detectors: SECOND backbone, SECONDFPN neck, centre head.

Layouts follow mmdet3d: ``SECOND.blocks[i]`` is a Sequential of Conv2d/BN/ReLU triplets whose
first conv is strided; ``SECONDFPN.deblocks[i]`` is ConvTranspose2d/BN/ReLU and the neck
concatenates the upsampled maps (``torch.cat`` in :meth:`SECONDFPN.forward`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    """Conv2d(bias=False) + BatchNorm2d + ReLU as a list of modules."""
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU()]


class SECOND(nn.Module):
    """Multi-stage 2D backbone; returns one feature map per stage."""

    def __init__(self, in_channels: int, out_channels: Sequence[int] = (64, 128),
                 layer_nums: Sequence[int] = (2, 2), layer_strides: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        blocks = []
        cin = in_channels
        for cout, n, s in zip(out_channels, layer_nums, layer_strides, strict=True):
            layers = conv_bn_relu(cin, cout, 3, s)
            for _ in range(n):
                layers += conv_bn_relu(cout, cout, 3, 1)
            blocks.append(nn.Sequential(*layers))
            cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return tuple(outs)


class SECONDFPN(nn.Module):
    """Upsample every stage with ConvTranspose2d/BN/ReLU to a common size, then ``torch.cat``."""

    def __init__(self, in_channels: Sequence[int] = (64, 128), out_channels: Sequence[int] = (64, 64),
                 upsample_strides: Sequence[int] = (2, 4)) -> None:
        super().__init__()
        self.deblocks = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(cin, cout, s, stride=s, bias=False),
                          nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU())
            for cin, cout, s in zip(in_channels, out_channels, upsample_strides, strict=True))
        self.out_channels = sum(out_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        ups = [deblock(f) for deblock, f in zip(self.deblocks, feats, strict=True)]
        return torch.cat(ups, dim=1)


class CenterHead(nn.Module):
    """Centre heatmap head: ``shared_conv`` then ``task_head`` -> [B, num_classes + 2, H, W].

    Channels ``[:num_classes]`` are heatmap logits, the last two the sub-cell centre offset
    (dx, dy) in cells.
    """

    def __init__(self, in_channels: int, num_classes: int = 3, head_channels: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared_conv = nn.Sequential(*conv_bn_relu(in_channels, head_channels))
        self.task_head = nn.Sequential(*conv_bn_relu(head_channels, head_channels),
                                       nn.Conv2d(head_channels, num_classes + 2, 3, padding=1, bias=True))
        with torch.no_grad():  # CenterNet prior: initial heatmap probability ~0.1
            self.task_head[-1].bias[:num_classes].fill_(-2.19)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task_head(self.shared_conv(x))


class CenterPointBEV(nn.Module):
    """BEV part of CenterPoint-lite: ``backbone`` -> ``neck`` -> ``head``."""

    def __init__(self, in_channels: int = 96, num_classes: int = 3, backbone_channels: Sequence[int] = (48, 96),
                 neck_channels: Sequence[int] = (48, 48), head_channels: int = 48) -> None:
        super().__init__()
        self.backbone = SECOND(in_channels, backbone_channels, (2, 2), (1, 2))
        self.neck = SECONDFPN(backbone_channels, neck_channels, (2, 4))
        self.head = CenterHead(self.neck.out_channels, num_classes, head_channels)

    def forward(self, bev_features: torch.Tensor) -> torch.Tensor:
        """[B, C, 16, 16] BEV features -> [B, num_classes + 2, 32, 32]."""
        return self.head(self.neck(self.backbone(bev_features)))
