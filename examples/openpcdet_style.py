"""An OpenPCDet-style voxel detector: every module takes the ``batch_dict`` and writes its result into it.

Used by ``docs/own_model.md`` ("Your own model: OpenPCDet / mmdet3d style"). The layout follows
OpenPCDet's ``Detector3DTemplate``: ``vfe`` (MeanVFE) -> ``backbone_3d`` (SECOND-style spconv
encoder with residual SparseBasicBlocks) -> ``backbone_2d`` (BaseBEVBackbone: two stages with a
residual block each, a strided conv, a ConvTranspose2d upsampling and a ``torch.cat``) ->
``dense_head`` (1x1 class and box convs). One change from OpenPCDet: the scatter to the BEV map
(OpenPCDet's ``map_to_bev_module``, HeightCompression) is the last step of ``backbone_3d``,
because NVIDIA's libspconv format (the ``onnx-sparse`` export) ends with that scatter: its file's
output is the dense BEV map.

Everything a recipe names is here: :func:`build`, :func:`calibration_data` / :func:`val_data` /
:func:`train_data` (lists of batch_dicts ``{voxels, voxel_num_points, voxel_coords, batch_size}``),
:func:`forward` (``(model, batch) -> {cls_preds, box_preds}``; it passes a copy of the batch,
since the modules write into it), :func:`loss` (for QAT: the model has no labels, so it follows
the FP32 model's predictions) and :func:`evaluate` (how closely a model follows the FP32 model:
``cls_agreement`` in percent of BEV cells, ``sqnr_db`` of the class logits; use your own
metric on your own model). The weights are random (BatchNorm statistics from a few batches).
Synthetic scenes; runs on CPU in milliseconds per batch.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import spconv.pytorch as spconv
import torch
from torch import nn

from recipe_engine.compat.spconv_cpu import install as _spconv_cpu_fixes

_spconv_cpu_fixes()  # spconv 2.3's CPU build needs them (see recipe_engine/compat), also for the FP32 model

GRID = (8, 64, 64)  # z, y, x voxels
MAX_POINTS = 5  # points per voxel
NUM_CLASSES = 3


class MeanVFE(nn.Module):
    """Mean of the points in each voxel -> batch_dict['voxel_features']."""

    def forward(self, batch_dict: dict) -> dict:
        points = batch_dict["voxels"].sum(dim=1)
        count = batch_dict["voxel_num_points"].clamp(min=1).view(-1, 1).type_as(points)
        batch_dict["voxel_features"] = points / count
        return batch_dict


class SparseBasicBlock(spconv.SparseModule):
    def __init__(self, channels: int, key: str) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=key)
        self.bn1 = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=key)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features) + x.features)
        return out.replace_feature(self.relu(out.features))


def _sparse(conv: nn.Module, channels: int) -> spconv.SparseSequential:
    return spconv.SparseSequential(conv, nn.BatchNorm1d(channels), nn.ReLU())


class VoxelResBackBone(nn.Module):
    """voxel_features/voxel_coords -> spconv encoder -> dense BEV map batch_dict['spatial_features']."""

    def __init__(self, in_channels: int = 4) -> None:
        super().__init__()
        self.conv_input = _sparse(spconv.SubMConv3d(in_channels, 16, 3, padding=1, bias=False, indice_key="subm1"), 16)
        self.conv1 = spconv.SparseSequential(SparseBasicBlock(16, "res1"))
        self.conv2 = spconv.SparseSequential(
            spconv.SparseConv3d(16, 32, 3, stride=2, padding=1, bias=False, indice_key="spconv2"),
            nn.BatchNorm1d(32), nn.ReLU(), SparseBasicBlock(32, "res2"))
        self.conv_out = _sparse(spconv.SparseConv3d(32, 32, (3, 1, 1), stride=(2, 1, 1), bias=False,
                                                    indice_key="out"), 32)
        self.num_bev_features = 32 * 1  # channels x remaining z

    def forward(self, batch_dict: dict) -> dict:
        x = spconv.SparseConvTensor(batch_dict["voxel_features"], batch_dict["voxel_coords"].int(), list(GRID),
                                    int(batch_dict["batch_size"]))
        x = self.conv_out(self.conv2(self.conv1(self.conv_input(x))))
        with warnings.catch_warnings():  # spconv's scatter indexes with a list (torch deprecation)
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            dense = x.dense()  # [B, C, Z, Y, X]: OpenPCDet's HeightCompression
        b, c, z, h, w = dense.shape
        batch_dict["spatial_features"] = dense.view(b, c * z, h, w)
        return batch_dict


class BasicBlock2d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class BaseBEVBackbone(nn.Module):
    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        self.block0 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(), BasicBlock2d(width))
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(), BasicBlock2d(width))
        self.deblock0 = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.deblock1 = nn.Sequential(nn.ConvTranspose2d(width, width, 2, stride=2, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU())
        self.num_bev_features = 2 * width

    def forward(self, batch_dict: dict) -> dict:
        x0 = self.block0(batch_dict["spatial_features"])
        x1 = self.block1(x0)
        batch_dict["spatial_features_2d"] = torch.cat([self.deblock0(x0), self.deblock1(x1)], dim=1)
        return batch_dict


class AnchorHead(nn.Module):
    def __init__(self, in_channels: int, anchors: int = 2) -> None:
        super().__init__()
        self.conv_cls = nn.Conv2d(in_channels, NUM_CLASSES * anchors, 1)
        self.conv_box = nn.Conv2d(in_channels, 7 * anchors, 1)

    def forward(self, batch_dict: dict) -> dict:
        features = batch_dict["spatial_features_2d"]
        batch_dict["cls_preds"] = self.conv_cls(features)
        batch_dict["box_preds"] = self.conv_box(features)
        return batch_dict


class VoxelDetector(nn.Module):
    """OpenPCDet's pattern: run the modules in order on one batch_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.vfe = MeanVFE()
        self.backbone_3d = VoxelResBackBone()
        self.backbone_2d = BaseBEVBackbone(self.backbone_3d.num_bev_features)
        self.dense_head = AnchorHead(self.backbone_2d.num_bev_features)

    def forward(self, batch_dict: dict) -> dict:
        for module in (self.vfe, self.backbone_3d, self.backbone_2d, self.dense_head):
            batch_dict = module(batch_dict)
        return batch_dict


# ----------------------------------------------------------------------------- data
def make_batch(seed: int, batch_size: int = 2) -> dict:
    """Synthetic voxelised scenes: 300-600 occupied voxels per scene, up to 5 points (x, y, z, i) each."""
    rng = np.random.default_rng(seed)
    z, y, x = GRID
    voxels, counts, coords = [], [], []
    for b in range(batch_size):
        n = int(rng.integers(300, 600))
        flat = rng.choice(z * y * x, size=n, replace=False)
        cz, cy, cx = np.unravel_index(flat, (z, y, x))
        points = rng.normal(scale=0.3, size=(n, MAX_POINTS, 4)).astype(np.float32)
        points[..., :3] += (np.stack([cx, cy, cz], 1)[:, None, :] / np.array([x, y, z])).astype(np.float32)
        k = rng.integers(1, MAX_POINTS + 1, size=n)
        points[np.arange(MAX_POINTS)[None, :] >= k[:, None]] = 0
        voxels.append(points)
        counts.append(k)
        coords.append(np.stack([np.full(n, b), cz, cy, cx], 1))
    return {"voxels": torch.from_numpy(np.concatenate(voxels)),
            "voxel_num_points": torch.from_numpy(np.concatenate(counts)),
            "voxel_coords": torch.from_numpy(np.concatenate(coords).astype(np.int32)),
            "batch_size": batch_size}


def calibration_data(count: int = 8, seed: int = 0) -> list[dict]:
    return [make_batch(1000 * (seed + 1) + i) for i in range(count)]


def val_data(count: int = 8) -> list[dict]:
    return [make_batch(50_000 + i) for i in range(count)]


def train_data(count: int = 16) -> list[dict]:
    return [make_batch(90_000 + i) for i in range(count)]


def forward(model: nn.Module, batch: dict) -> dict:
    """``(model, batch) -> output``: a copy of the batch (the modules write into it); the predictions."""
    out = model(dict(batch))
    return {"cls_preds": out["cls_preds"], "box_preds": out["box_preds"]}


def loss(output: dict, batch: dict) -> torch.Tensor:
    """A stand-in training loss (this model has no labels): follow the FP32 model's predictions."""
    with torch.no_grad():
        teacher = forward(_reference(), batch)
    return sum(nn.functional.mse_loss(output[k], teacher[k]) for k in ("cls_preds", "box_preds"))


# ----------------------------------------------------------------------------- model and metric
def build(seed: int = 0) -> VoxelDetector:
    """Seeded weights; BatchNorm statistics from 4 synthetic batches (so folding them is not a no-op)."""
    torch.manual_seed(seed)
    model = VoxelDetector()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for batch in calibration_data(4, seed=7):
            for part in (model.vfe, model.backbone_3d, model.backbone_2d, model.dense_head):
                batch = part(batch)
    return model.eval()


@functools.lru_cache(maxsize=2)
def _reference(seed: int = 0) -> VoxelDetector:
    return build(seed)


def evaluate(model: nn.Module, batches: list[dict]) -> dict[str, float]:
    """``cls_agreement``: % of BEV cells whose arg-max class is the FP32 model's; ``sqnr_db`` of the logits."""
    agree = cells = 0
    signal = noise = 0.0
    with torch.no_grad():
        for batch in batches:
            out, ref = forward(model, batch)["cls_preds"], forward(_reference(), batch)["cls_preds"]
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            cells += ref[:, 0].numel()
            signal += float(ref.pow(2).sum())
            noise += float((out - ref).pow(2).sum())
    return {"cls_agreement": 100.0 * agree / cells, "sqnr_db": 10 * float(np.log10(signal / max(noise, 1e-30)))}
