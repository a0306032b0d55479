"""A small sparse U-Net with concat skips and a dense BEV head: a model the zoo does not have.

Used by ``docs/tutorial.md`` ("Quantize your own model"). Everything a recipe names is here:

- :func:`build`: the model (deterministic weights; BatchNorm statistics set from a few synthetic
  scenes, so folding them is not a no-op);
- :func:`calibration_data` / :func:`val_data`: lists of batches ``{"voxel_features", "coors",
  "batch_size"}`` of synthetic voxelised scenes (a ground plane and 2-4 boxes);
- :func:`forward_batch`: ``(model, batch) -> BEV logits [B, classes, 32, 32]``;
- :func:`evaluate`: how closely a model follows the FP32 model on the batches: ``agreement``
  (percent of occupied BEV cells whose arg-max class is the FP32 model's) and ``sqnr_db``.

The U-Net (``backbone``): ``conv_input`` and ``enc1`` (SubMConv3d), ``down1``/``down2``
(SparseConv3d, stride 2), ``mid`` (SubMConv3d), then ``up2``/``up1`` (:class:`UpBlock`:
SparseInverseConv3d back to the skip's voxels, ``torch.cat`` of the upsampled and the skip
features, SubMConv3d). Its output is scattered to a dense [B, C * Z, Y, X] map for ``bev``
(Conv2d/BN/ReLU x 2, Conv2d). Runs on CPU in milliseconds per batch.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import spconv.pytorch as spconv
import torch
from torch import nn

from recipe_engine.compat.spconv_cpu import install as _spconv_cpu_fixes

_spconv_cpu_fixes()  # spconv 2.3's CPU build needs them (see recipe_engine/compat)

SPATIAL_SHAPE = (4, 32, 32)  # z, y, x voxels
NUM_CLASSES = 3  # background/ground, low box, tall box


def _subm(cin: int, cout: int, key: str) -> list[nn.Module]:
    return [spconv.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=key),
            nn.BatchNorm1d(cout, eps=1e-3), nn.ReLU()]


def _down(cin: int, cout: int, key: str) -> list[nn.Module]:
    return [spconv.SparseConv3d(cin, cout, 3, stride=2, padding=1, bias=False, indice_key=key),
            nn.BatchNorm1d(cout, eps=1e-3), nn.ReLU()]


class UpBlock(spconv.SparseModule):
    """Upsample to the skip's voxels (inverse of the ``key`` downsampling), concat the skip, SubMConv3d."""

    def __init__(self, cin: int, cskip: int, cout: int, key: str, subm_key: str) -> None:
        super().__init__()
        self.up = spconv.SparseSequential(
            spconv.SparseInverseConv3d(cin, cout, 3, indice_key=key, bias=False),
            nn.BatchNorm1d(cout, eps=1e-3), nn.ReLU())
        self.fuse = spconv.SparseSequential(*_subm(cout + cskip, cout, subm_key))

    def forward(self, x: spconv.SparseConvTensor, skip: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        up = self.up(x)
        joined = up.replace_feature(torch.cat([up.features, skip.features], dim=1))
        return self.fuse(joined)


class SparseUNet(nn.Module):
    """Voxels -> U-Net features scattered to a dense BEV map [B, C * Z, Y, X]."""

    def __init__(self, in_channels: int = 4, width: int = 16) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.conv_input = spconv.SparseSequential(*_subm(in_channels, w1, "subm1"))
        self.enc1 = spconv.SparseSequential(*_subm(w1, w1, "subm1"))
        self.down1 = spconv.SparseSequential(*_down(w1, w2, "down1"))
        self.enc2 = spconv.SparseSequential(*_subm(w2, w2, "subm2"))
        self.down2 = spconv.SparseSequential(*_down(w2, w3, "down2"))
        self.mid = spconv.SparseSequential(*_subm(w3, w3, "subm3"))
        self.up2 = UpBlock(w3, w2, w2, "down2", "subm2")
        self.up1 = UpBlock(w2, w1, w1, "down1", "subm1")
        self.out_channels = w1 * SPATIAL_SHAPE[0]

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, coors.int(), list(SPATIAL_SHAPE), int(batch_size))
        e1 = self.enc1(self.conv_input(x))
        e2 = self.enc2(self.down1(e1))
        y = self.up1(self.up2(self.mid(self.down2(e2)), e2), e1)
        with warnings.catch_warnings():  # spconv's scatter indexes with a list (torch deprecation)
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            dense = y.dense()  # [B, C, Z, Y, X]
        b, c, z, h, w = dense.shape
        return dense.reshape(b, c * z, h, w)


class BEVHead(nn.Module):
    def __init__(self, in_channels: int, width: int = 32, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.cls = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.convs(x))


class SparseUNetSeg(nn.Module):
    """``backbone`` (sparse U-Net) then ``bev`` (dense head): voxels -> BEV class logits."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.backbone = SparseUNet(4, width)
        self.bev = BEVHead(self.backbone.out_channels)

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        return self.bev(self.backbone(voxel_features, coors, batch_size))


# ----------------------------------------------------------------------------- data
def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of one synthetic scene: ground cells plus 2-4 boxes; features (x, y, z, intensity)."""
    rng = np.random.default_rng(seed)
    z_max, y_max, x_max = SPATIAL_SHAPE
    cells = {}
    ground = rng.random((y_max, x_max)) < 0.12
    for y, x in zip(*np.nonzero(ground), strict=True):
        cells[(0, y, x)] = 0.2 + 0.1 * rng.random()
    for _ in range(rng.integers(2, 5)):
        height = int(rng.integers(2, z_max))
        y0, x0 = rng.integers(1, y_max - 6), rng.integers(1, x_max - 6)
        sy, sx = rng.integers(2, 5, size=2)
        for z in range(1, height):
            for y in range(y0, y0 + sy):
                for x in range(x0, x0 + sx):
                    if rng.random() < 0.6:
                        cells[(z, y, x)] = 0.5 + 0.5 * rng.random() * (height / z_max)
    coords = np.array(list(cells), dtype=np.int32)
    scale = np.array([z_max, y_max, x_max], dtype=np.float32)
    xyz = (coords[:, ::-1] + 0.5) / scale[::-1]
    features = np.concatenate([xyz, np.array(list(cells.values()), np.float32)[:, None]], axis=1)
    return features.astype(np.float32), coords


def make_batch(seeds: list[int]) -> dict:
    feats, coors = [], []
    for b, seed in enumerate(seeds):
        f, c = _scene(seed)
        feats.append(torch.from_numpy(f))
        coors.append(torch.from_numpy(np.concatenate([np.full((len(c), 1), b, np.int32), c], axis=1)))
    return {"voxel_features": torch.cat(feats), "coors": torch.cat(coors), "batch_size": len(seeds)}


def calibration_data(count: int = 8, batch_size: int = 2) -> list[dict]:
    """``count`` scenes (seeds 1000...) in batches."""
    return [make_batch(list(range(1000 + i, 1000 + min(i + batch_size, count)))) for i in range(0, count, batch_size)]


def val_data(count: int = 8, batch_size: int = 2) -> list[dict]:
    """``count`` held-out scenes (seeds 5000...) in batches."""
    return [make_batch(list(range(5000 + i, 5000 + min(i + batch_size, count)))) for i in range(0, count, batch_size)]


def forward_batch(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["voxel_features"], batch["coors"], int(batch["batch_size"]))


# ----------------------------------------------------------------------------- model and metric
def build(width: int = 16, seed: int = 0) -> SparseUNetSeg:
    """Seeded weights; BatchNorm running statistics from 4 synthetic scenes (train mode, no gradients)."""
    torch.manual_seed(seed)
    model = SparseUNetSeg(width)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the warm-up batches
    model.train()
    with torch.no_grad():
        for batch in calibration_data(4, 2):
            forward_batch(model, batch)
    return model.eval()


@functools.lru_cache(maxsize=4)
def _reference(width: int = 16, seed: int = 0) -> SparseUNetSeg:
    return build(width, seed)


_REFERENCE_OUTPUTS: dict[bytes, torch.Tensor] = {}


def _reference_output(batch: dict) -> torch.Tensor:
    """The FP32 model's output on ``batch`` (computed once per distinct batch)."""
    key = batch["voxel_features"].numpy().tobytes() + batch["coors"].numpy().tobytes()
    if key not in _REFERENCE_OUTPUTS:
        _REFERENCE_OUTPUTS[key] = forward_batch(_reference(), batch)
    return _REFERENCE_OUTPUTS[key]


def evaluate(model: nn.Module, batches: list[dict]) -> dict[str, float]:
    """``agreement`` (% of occupied BEV cells with the FP32 model's arg-max class) and ``sqnr_db``."""
    agree = cells = 0
    signal = noise = 0.0
    with torch.no_grad():
        for batch in batches:
            out, ref = forward_batch(model, batch), _reference_output(batch)
            occupied = torch.zeros(out.shape[0], *out.shape[2:], dtype=torch.bool)
            c = batch["coors"].long()
            occupied[c[:, 0], c[:, 2], c[:, 3]] = True
            agree += int((out.argmax(1) == ref.argmax(1))[occupied].sum())
            cells += int(occupied.sum())
            signal += float((ref ** 2).sum())
            noise += float(((out - ref) ** 2).sum())
    return {"agreement": 100.0 * agree / max(cells, 1), "sqnr_db": 10 * float(np.log10(signal / max(noise, 1e-30)))}
