"""Long-range synthetic lidar for the PointPillars zoo model: far objects, raw point features, pillars.

The scenes are :func:`~.geometry.make_scene` with a larger :class:`~.geometry.SceneLayout`
(objects out to 50 m, twice as many) and the same 32-beam ray-cast lidar as :mod:`.lidar`, kept
out to 80 m. Points stay raw and unnormalised, as a sensor driver hands them over: x, y, z in
metres over x, y in [-51.2, 51.2), z in [-3, 3), and intensity as the sensor's 8-bit value
(0-255). Pillars are 0.8 m x 0.8 m columns (a 128 x 128 BEV grid); every point carries the index
of its pillar, so the model computes the PointPillars point decorations itself.

Splits own disjoint seed ranges (:func:`~.lidar.split_seeds`): train, calib, val, test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .detection import render_targets
from .geometry import Scene, SceneLayout, make_scene
from .lidar import padded_labels, scan, scene_labels
from .metrics import BEVGrid

PC_RANGE: tuple[float, ...] = (-51.2, -51.2, -3.0, 51.2, 51.2, 3.0)  # xmin, ymin, zmin, xmax, ymax, zmax
PILLAR_SIZE = 0.8
GRID_SIZE = 128  # pillars per side: 102.4 m / 0.8 m
MAX_RANGE = 80.0  # returns beyond this (m) are lost
INTENSITY_SCALE = 255.0  # the sensor reports intensity as an 8-bit integer
LAYOUT = SceneLayout(place_radius=(3.0, 50.0), half_extent=50.5, far_min_radius=30.0, count_scale=2.0)
#: Detector output map: 64 x 64 cells of 1.6 m over the same square.
OUTPUT_GRID = BEVGrid(x_min=PC_RANGE[0], y_min=PC_RANGE[1], cell=1.6, size=64)


@dataclass(frozen=True)
class PillarFrame:
    """One long-range scene: raw points (inside the range), their pillars, and BEV labels."""

    scene: Scene
    points: np.ndarray  # float32 [P, 4] x, y, z (m), intensity (0-255)
    point_pillar: np.ndarray  # int64 [P] index into pillar_coords
    pillar_coords: np.ndarray  # int32 [Q, 2] (y, x) on the 128 x 128 grid
    labels: dict[str, np.ndarray]


def in_range(points: np.ndarray) -> np.ndarray:
    """Boolean mask of points inside :data:`PC_RANGE`."""
    lo, hi = np.asarray(PC_RANGE[:3]), np.asarray(PC_RANGE[3:])
    return np.all((points[:, :3] >= lo) & (points[:, :3] < hi), axis=1)


def pillarize(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pillar of every point: ``point_pillar`` int64 [P] and ``pillar_coords`` int32 [Q, 2] (y, x),
    pillars ordered by linear index (deterministic). ``points`` must lie inside :data:`PC_RANGE`."""
    ix = np.floor((points[:, 0].astype(np.float64) - PC_RANGE[0]) / PILLAR_SIZE).astype(np.int64)
    iy = np.floor((points[:, 1].astype(np.float64) - PC_RANGE[1]) / PILLAR_SIZE).astype(np.int64)
    ix, iy = np.clip(ix, 0, GRID_SIZE - 1), np.clip(iy, 0, GRID_SIZE - 1)
    uniq, inverse = np.unique(iy * GRID_SIZE + ix, return_inverse=True)
    coords = np.stack([uniq // GRID_SIZE, uniq % GRID_SIZE], axis=1).astype(np.int32)
    return inverse.astype(np.int64).reshape(-1), coords


def make_frame(seed: int) -> PillarFrame:
    """Scene, scan (80 m), raw points in range, pillars and labels for one seed (deterministic)."""
    scene = make_scene(seed, LAYOUT)
    points, ids = scan(scene, max_range=MAX_RANGE, bounds=PC_RANGE)
    inside = in_range(points)
    labels = scene_labels(scene, ids, points, inside)
    pts = points[inside].copy()
    pts[:, 3] = np.round(pts[:, 3] * INTENSITY_SCALE)
    point_pillar, coords = pillarize(pts)
    return PillarFrame(scene, pts.astype(np.float32), point_pillar, coords, labels)


def collate(frames: Iterable[PillarFrame]) -> dict[str, torch.Tensor]:
    """Stack frames: ``points`` [P, 4], ``point_pillar`` int64 [P] (into the batch's pillars),
    ``pillar_coors`` int32 [Q, 3] (batch, y, x), ``batch_size`` (0-d), padded labels ``gt_*``
    (``gt_cls`` -1 = padding) and the heatmap targets on :data:`OUTPUT_GRID`."""
    frames = list(frames)
    b = len(frames)
    offsets = np.cumsum([0] + [len(f.pillar_coords) for f in frames])
    coors = [np.concatenate([np.full((len(f.pillar_coords), 1), i, np.int32), f.pillar_coords], axis=1)
             for i, f in enumerate(frames)]
    batch = {
        "points": torch.from_numpy(np.concatenate([f.points for f in frames])),
        "point_pillar": torch.from_numpy(np.concatenate([f.point_pillar + o for f, o in zip(frames, offsets,
                                                                                            strict=False)])),
        "pillar_coors": torch.from_numpy(np.concatenate(coors)),
        "batch_size": torch.tensor(b, dtype=torch.int64),
        **padded_labels(frames),
    }
    batch.update(render_targets(batch["gt_cls"], batch["gt_center"], batch["gt_size"], OUTPUT_GRID))
    return batch


def make_batch(seeds: Sequence[int]) -> dict[str, torch.Tensor]:
    """Batch of the given scene seeds."""
    return collate(make_frame(s) for s in seeds)


__all__ = ["GRID_SIZE", "INTENSITY_SCALE", "LAYOUT", "OUTPUT_GRID", "PC_RANGE", "PILLAR_SIZE", "PillarFrame",
           "collate", "in_range", "make_batch", "make_frame", "pillarize"]
