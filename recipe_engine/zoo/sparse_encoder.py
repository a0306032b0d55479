"""CenterPoint-style sparse 3D encoder (SpMiddleResNetFHD layout, small channels).

All sparse convs are ``bias=False`` with the default ``act_type`` and followed by
``BatchNorm1d`` (spconv on CPU refuses fused bias/activation in eval mode; this is also how
CenterPoint builds them). Residual adds live in :meth:`SparseBasicBlock.forward`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from torch import nn

from ..compat.spconv_cpu import install as _install_spconv_cpu_fixes

_install_spconv_cpu_fixes()  # CPU backward + single-threaded CPU sparse conv (see recipe_engine.compat)


class SparseBasicBlock(spconv.SparseModule):
    """Submanifold residual block: conv1-bn1-relu-conv2-bn2, ``+ identity``, relu."""

    def __init__(self, inplanes: int, planes: int, indice_key: str,
                 downsample: spconv.SparseModule | None = None) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(inplanes, planes, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = nn.BatchNorm1d(planes, eps=1e-3)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(planes, planes, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = nn.BatchNorm1d(planes, eps=1e-3)
        self.downsample = downsample

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out.replace_feature(out.features + identity.features)
        out = out.replace_feature(self.relu(out.features))
        return out


def _sparse_conv_bn_relu(cin: int, cout: int, kernel: int | Sequence[int], stride: int | Sequence[int],
                         padding: int | Sequence[int], indice_key: str) -> list[nn.Module]:
    return [spconv.SparseConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False,
                                indice_key=indice_key),
            nn.BatchNorm1d(cout, eps=1e-3), nn.ReLU()]


class SparseEncoder(nn.Module):
    """Voxels -> dense BEV map ``[B, C * D, H, W]``.

    Stages (strides are relative to the input grid ``[41, 128, 128]``)::

        conv_input  SubMConv3d+BN+ReLU                          [41, 128, 128]
        conv1       2 x SparseBasicBlock                          [41, 128, 128]
        conv2       SparseConv3d(s2)+BN+ReLU, 2 x SparseBasicBlock [21, 64, 64]
        conv3       SparseConv3d(s2)+BN+ReLU, 2 x SparseBasicBlock [11, 32, 32]
        conv4       SparseConv3d(s2, pad z 0)+BN+ReLU, 2 x block   [5, 16, 16]
        extra_conv  SparseConv3d((3,1,1), s(2,1,1))+BN+ReLU        [2, 16, 16]
    """

    def __init__(self, in_channels: int = 4, sparse_shape: Sequence[int] = (41, 128, 128),
                 channels: Sequence[int] = (16, 32, 48, 48), out_channels: int = 48,
                 blocks_per_stage: int = 2) -> None:
        super().__init__()
        self.sparse_shape = list(sparse_shape)
        c1, c2, c3, c4 = channels
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(in_channels, c1, 3, padding=1, bias=False, indice_key="subm1"),
            nn.BatchNorm1d(c1, eps=1e-3), nn.ReLU())

        def blocks(c: int, key: str) -> list[nn.Module]:
            return [SparseBasicBlock(c, c, indice_key=key) for _ in range(blocks_per_stage)]

        self.conv1 = spconv.SparseSequential(*blocks(c1, "res1"))
        self.conv2 = spconv.SparseSequential(*_sparse_conv_bn_relu(c1, c2, 3, 2, 1, "spconv2"), *blocks(c2, "res2"))
        self.conv3 = spconv.SparseSequential(*_sparse_conv_bn_relu(c2, c3, 3, 2, 1, "spconv3"), *blocks(c3, "res3"))
        self.conv4 = spconv.SparseSequential(
            *_sparse_conv_bn_relu(c3, c4, 3, 2, (0, 1, 1), "spconv4"), *blocks(c4, "res4"))
        self.extra_conv = spconv.SparseSequential(
            *_sparse_conv_bn_relu(c4, out_channels, (3, 1, 1), (2, 1, 1), 0, "spconv_down2"))
        self.out_channels = out_channels * self.bev_depth

    @property
    def bev_depth(self) -> int:
        """Number of z cells left after ``extra_conv`` (2 for the default 41-cell grid)."""
        d = self.sparse_shape[0]
        for k, s, p in ((3, 2, 1), (3, 2, 1), (3, 2, 0), (3, 2, 0)):
            d = (d + 2 * p - k) // s + 1
        return d

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``voxel_features`` [N, C], ``coors`` int32 [N, 4] (batch, z, y, x) -> [B, C*D, H, W]."""
        x = spconv.SparseConvTensor(voxel_features, coors.int(), self.sparse_shape, int(batch_size))
        x = self.conv_input(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.conv4(x)
        x = self.extra_conv(x)
        with warnings.catch_warnings():  # spconv's scatter_nd indexes with a list (torch deprecation)
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            dense = x.dense()  # [B, C, D, H, W]
        b, c, d, h, w = dense.shape
        return dense.view(b, c * d, h, w)
