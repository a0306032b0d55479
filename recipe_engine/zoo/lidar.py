"""Deterministic synthetic lidar scans, voxelisation to spconv inputs, labels and splits.

A 32-beam spinning lidar at the origin is ray cast against a :class:`~.geometry.Scene`, so
points lie on visible surfaces only, occlusion is real and density falls with range. Range
noise, intensity noise, dropped returns and clutter points (dust / spurious returns) are added.

Voxel grid (CenterPoint-like, downsampled 41 -> 21 -> 11 -> 5 -> 2 along z by the encoder):
x, y in [-25.6, 25.6) m at 0.4 m (128 x 128), z in [-2.5, 2.625) m at 0.125 m (41).
Voxel features are the mean (x, y, z, intensity) of the points in a voxel (float32 [N, 4]);
indices are int32 [N, 4] = (batch, z, y, x); the spatial shape is [Z, Y, X] = [41, 128, 128].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import CLASSES, HIT_NONE, RayBundle, Scene, make_scene, raycast

PC_RANGE: tuple[float, ...] = (-25.6, -25.6, -2.5, 25.6, 25.6, 2.625)  # xmin, ymin, zmin, xmax, ymax, zmax
VOXEL_SIZE: tuple[float, float, float] = (0.4, 0.4, 0.125)  # x, y, z
SPATIAL_SHAPE: tuple[int, int, int] = (41, 128, 128)  # Z, Y, X
NUM_POINT_FEATURES = 4

BEAM_ELEVATIONS_DEG = np.linspace(-25.0, 5.0, 32)
NUM_AZIMUTHS = 1024
MIN_POINTS_PER_TARGET = 5  # objects with fewer lidar points inside the grid are not labelled

#: Disjoint scene-seed ranges per split (tested to never overlap).
SPLIT_BASES: dict[str, int] = {"train": 0, "calib": 1_000_000, "val": 2_000_000, "test": 3_000_000}
SPLIT_SIZE = 1_000_000

_ELEV = np.deg2rad(BEAM_ELEVATIONS_DEG)
_AZ = np.linspace(-np.pi, np.pi, NUM_AZIMUTHS, endpoint=False)
_RAY_DIRS = np.stack(
    [np.cos(_ELEV)[:, None] * np.cos(_AZ)[None, :],
     np.cos(_ELEV)[:, None] * np.sin(_AZ)[None, :],
     np.broadcast_to(np.sin(_ELEV)[:, None], (len(_ELEV), NUM_AZIMUTHS))], axis=-1).reshape(-1, 3)
_RAYS = RayBundle(_RAY_DIRS)


@dataclass(frozen=True)
class LidarFrame:
    """One scene as seen by the lidar: raw points, voxels and BEV labels."""

    scene: Scene
    points: np.ndarray  # float32 [P, 4] x, y, z, intensity
    voxel_features: np.ndarray  # float32 [N, 4] mean x, y, z, intensity
    voxel_coords: np.ndarray  # int32 [N, 3] z, y, x
    labels: dict[str, np.ndarray]  # see scene_labels


def split_seeds(split: str, count: int, seed: int = 0) -> list[int]:
    """``count`` distinct scene seeds of ``split``, drawn reproducibly with ``seed``.

    Each split owns the range ``[SPLIT_BASES[split], SPLIT_BASES[split] + SPLIT_SIZE)``.
    """
    if split not in SPLIT_BASES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_BASES)}")
    if not 0 < count <= SPLIT_SIZE:
        raise ValueError(f"count must be in [1, {SPLIT_SIZE}]")
    offsets = np.random.default_rng([seed, 7919]).choice(SPLIT_SIZE, size=count, replace=False)
    return [SPLIT_BASES[split] + int(o) for o in offsets]


def scan(scene: Scene, max_range: float = 60.0,
         bounds: tuple[float, ...] = PC_RANGE) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one lidar sweep; returns points float32 [P, 4] and the hit id of each point.

    Returns beyond ``max_range`` (m) are lost; clutter returns are scattered uniformly in ``bounds``.
    """
    rng = np.random.default_rng([scene.seed, 1])
    t, hit_id, normal = raycast(scene, np.zeros(3), _RAYS)
    keep = np.isfinite(t) & (t < max_range) & (rng.random(len(t)) > 0.03)  # 3 % dropped returns
    t, hit_id, normal, dirs = t[keep], hit_id[keep], normal[keep], _RAY_DIRS[keep]
    t_noisy = t * (1.0 + rng.normal(0.0, 0.002, len(t))) + rng.normal(0.0, 0.015, len(t))
    xyz = dirs * t_noisy[:, None]
    refl = np.where(hit_id >= 0, scene.reflectivity[np.maximum(hit_id, 0)], 0.08)
    cos_inc = np.abs((normal * dirs).sum(axis=1))
    intensity = np.clip(refl * (0.4 + 0.6 * cos_inc) * rng.normal(1.0, 0.1, len(t)), 0.0, 1.0)
    # clutter: uniformly scattered spurious returns
    n_clutter = int(rng.integers(100, 300))
    lo, hi = np.array(bounds[:3]), np.array(bounds[3:])
    clutter = rng.uniform(lo, hi, size=(n_clutter, 3))
    points = np.concatenate([
        np.concatenate([xyz, intensity[:, None]], axis=1),
        np.concatenate([clutter, rng.uniform(0.0, 0.3, (n_clutter, 1))], axis=1),
    ]).astype(np.float32)
    ids = np.concatenate([hit_id, np.full(n_clutter, HIT_NONE, dtype=np.int64)])
    return points, ids


def in_grid(points: np.ndarray) -> np.ndarray:
    """Boolean mask of points inside :data:`PC_RANGE`."""
    lo, hi = np.asarray(PC_RANGE[:3]), np.asarray(PC_RANGE[3:])
    return np.all((points[:, :3] >= lo) & (points[:, :3] < hi), axis=1)


def voxelize(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pool points into voxels: features float32 [N, 4], coords int32 [N, 3] (z, y, x).

    Voxels are ordered by linear index (z, y, x), so the output is deterministic.
    """
    pts = points[in_grid(points)]
    lo = np.asarray(PC_RANGE[:3], dtype=np.float64)
    cxyz = np.floor((pts[:, :3].astype(np.float64) - lo) / np.asarray(VOXEL_SIZE)).astype(np.int64)
    nz, ny, nx = SPATIAL_SHAPE
    cxyz = np.minimum(cxyz, np.array([nx - 1, ny - 1, nz - 1]))
    linear = (cxyz[:, 2] * ny + cxyz[:, 1]) * nx + cxyz[:, 0]
    uniq, inverse = np.unique(linear, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    feats = np.stack([np.bincount(inverse, weights=pts[:, c], minlength=len(uniq))
                      for c in range(NUM_POINT_FEATURES)], axis=1) / counts[:, None]
    coords = np.stack([uniq // (ny * nx), (uniq // nx) % ny, uniq % nx], axis=1)
    return feats.astype(np.float32), coords.astype(np.int32)


def scene_labels(scene: Scene, hit_ids: np.ndarray, points: np.ndarray,
                 inside: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BEV labels of the target objects seen by at least :data:`MIN_POINTS_PER_TARGET` points.

    Points count when ``inside`` (bool [P]; default: inside :data:`PC_RANGE`). Keys: ``cls`` int64
    [M], ``center`` float32 [M, 2] (x, y), ``size`` float32 [M, 2] (l, w), ``yaw`` float32 [M],
    ``num_points`` int64 [M].
    """
    inside = in_grid(points) if inside is None else inside
    counts = np.bincount(hit_ids[(hit_ids >= 0) & inside], minlength=len(scene.boxes))
    keep = np.nonzero((scene.category >= 0) & (counts >= MIN_POINTS_PER_TARGET))[0]
    b = scene.boxes[keep]
    return {
        "cls": scene.category[keep].astype(np.int64),
        "center": b[:, :2].astype(np.float32),
        "size": b[:, 3:5].astype(np.float32),
        "yaw": b[:, 6].astype(np.float32),
        "num_points": counts[keep].astype(np.int64),
    }


def make_frame(seed: int) -> LidarFrame:
    """Scene, scan, voxels and labels for one scene seed (fully deterministic)."""
    scene = make_scene(seed)
    points, ids = scan(scene)
    feats, coords = voxelize(points)
    return LidarFrame(scene, points, feats, coords, scene_labels(scene, ids, points))


def collate_voxels(frames: Iterable[LidarFrame]) -> dict[str, torch.Tensor]:
    """Stack voxels of several frames: ``voxel_features`` [N, 4], ``coors`` int32 [N, 4]
    (batch, z, y, x), ``batch_size`` (0-d int64), and padded labels ``gt_cls`` [B, M] (-1 =
    padding), ``gt_center`` [B, M, 2], ``gt_size`` [B, M, 2], ``gt_yaw`` [B, M]."""
    frames = list(frames)
    coords = [np.concatenate([np.full((len(f.voxel_coords), 1), i, np.int32), f.voxel_coords], axis=1)
              for i, f in enumerate(frames)]
    return {
        "voxel_features": torch.from_numpy(np.concatenate([f.voxel_features for f in frames])),
        "coors": torch.from_numpy(np.concatenate(coords)),
        "batch_size": torch.tensor(len(frames), dtype=torch.int64),
        **padded_labels(frames),
    }


def padded_labels(frames: Sequence) -> dict[str, torch.Tensor]:
    """The frames' labels padded to the most objects of any frame: ``gt_cls`` [B, M] (-1 = padding),
    ``gt_center`` [B, M, 2], ``gt_size`` [B, M, 2], ``gt_yaw`` [B, M]."""
    m = max([1] + [len(f.labels["cls"]) for f in frames])
    b = len(frames)
    gt_cls = np.full((b, m), -1, np.int64)
    gt_center = np.zeros((b, m, 2), np.float32)
    gt_size = np.zeros((b, m, 2), np.float32)
    gt_yaw = np.zeros((b, m), np.float32)
    for i, f in enumerate(frames):
        n = len(f.labels["cls"])
        gt_cls[i, :n] = f.labels["cls"]
        gt_center[i, :n] = f.labels["center"]
        gt_size[i, :n] = f.labels["size"]
        gt_yaw[i, :n] = f.labels["yaw"]
    return {"gt_cls": torch.from_numpy(gt_cls), "gt_center": torch.from_numpy(gt_center),
            "gt_size": torch.from_numpy(gt_size), "gt_yaw": torch.from_numpy(gt_yaw)}


__all__ = [
    "CLASSES", "LidarFrame", "NUM_POINT_FEATURES", "PC_RANGE", "SPATIAL_SHAPE", "SPLIT_BASES",
    "VOXEL_SIZE", "collate_voxels", "in_grid", "make_frame", "padded_labels", "scan", "scene_labels", "split_seeds",
    "voxelize",
]
