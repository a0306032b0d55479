"""Synthetic scenes: determinism, split hygiene, voxel grid validity, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recipe_engine.zoo import images, lidar
from recipe_engine.zoo.geometry import CLASSES, make_scene


def test_same_seed_identical_frames() -> None:
    a, b = lidar.make_frame(123), lidar.make_frame(123)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.voxel_features, b.voxel_features)
    np.testing.assert_array_equal(a.voxel_coords, b.voxel_coords)
    for k in a.labels:
        np.testing.assert_array_equal(a.labels[k], b.labels[k])
    c = lidar.make_frame(124)
    assert len(c.points) != len(a.points) or not np.array_equal(c.points, a.points)


def test_same_seed_identical_images() -> None:
    scene = make_scene(7)
    a, b = images.render(scene), images.render(make_scene(7))
    assert a.shape == (len(images.CAMERA_YAWS), 3, *images.IMAGE_SIZE) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_split_seeds_disjoint_and_reproducible() -> None:
    seeds = {s: lidar.split_seeds(s, 2000, seed=3) for s in lidar.SPLIT_BASES}
    assert seeds["train"] == lidar.split_seeds("train", 2000, seed=3)
    for s, v in seeds.items():
        assert len(set(v)) == len(v)
        lo = lidar.SPLIT_BASES[s]
        assert all(lo <= x < lo + lidar.SPLIT_SIZE for x in v)
    names = list(seeds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(seeds[a]) & set(seeds[b])
    bases = sorted(lidar.SPLIT_BASES.values())
    assert all(b - a >= lidar.SPLIT_SIZE for a, b in zip(bases, bases[1:], strict=False))
    with pytest.raises(ValueError):
        lidar.split_seeds("holdout", 4)


@pytest.mark.parametrize("seed", [0, 1_000_001, 2_000_002])
def test_voxels_inside_grid(seed: int) -> None:
    f = lidar.make_frame(seed)
    z, y, x = lidar.SPATIAL_SHAPE
    c = f.voxel_coords
    assert f.voxel_features.dtype == np.float32 and c.dtype == np.int32
    assert f.voxel_features.shape == (len(c), 4)
    assert c.min() >= 0 and (c.max(axis=0) < np.array([z, y, x])).all()
    assert len(np.unique(c, axis=0)) == len(c)
    # the mean point of every voxel lies inside that voxel
    lo = np.asarray(lidar.PC_RANGE[:3])
    vs = np.asarray(lidar.VOXEL_SIZE)
    cell = np.floor((f.voxel_features[:, :3] - lo) / vs).astype(int)
    assert np.mean((cell == c[:, ::-1]).all(axis=1)) > 0.999
    assert 1000 < len(c) < 20000
    labels = f.labels
    assert set(np.unique(labels["cls"])) <= set(range(len(CLASSES)))
    assert (labels["num_points"] >= lidar.MIN_POINTS_PER_TARGET).all()
    assert (np.abs(labels["center"]) < 25.6).all()


def test_collate_has_batch_column() -> None:
    frames = [lidar.make_frame(s) for s in (1, 2, 3)]
    batch = lidar.collate_voxels(frames)
    coors = batch["coors"]
    assert coors.dtype == torch.int32 and coors.shape[1] == 4
    counts = torch.bincount(coors[:, 0].long()).tolist()
    assert counts == [len(f.voxel_coords) for f in frames]
    assert int(batch["batch_size"]) == 3
    assert batch["gt_cls"].shape[0] == 3
    for i, f in enumerate(frames):
        n = len(f.labels["cls"])
        assert (batch["gt_cls"][i, :n] >= 0).all() and (batch["gt_cls"][i, n:] == -1).all()
