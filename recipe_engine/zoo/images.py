"""Camera images rendered from the synthetic scenes (ray cast, Lambert shaded RGB).

Two virtual pinhole cameras sit at the lidar origin, looking forward (+x) and backward (-x),
each 64 x 176 pixels with a 120 degree horizontal field of view. Objects have a per-object
albedo, the ground a noisy grey texture and the sky a vertical gradient; a per-scene sun
direction shades surfaces. Images are float32 in [0, 1], shape [num_cams, 3, H, W].
"""

from __future__ import annotations

import numpy as np

from .geometry import HIT_GROUND, HIT_NONE, RayBundle, Scene, raycast

IMAGE_SIZE: tuple[int, int] = (64, 176)  # H, W
HFOV_DEG = 120.0
CAMERA_YAWS: tuple[float, ...] = (0.0, np.pi)  # front, back
CAMERA_ORIGIN = np.zeros(3)
#: Per-channel normalisation applied when images are batched.
IMAGE_MEAN: tuple[float, float, float] = (0.45, 0.47, 0.50)
IMAGE_STD: tuple[float, float, float] = (0.22, 0.22, 0.25)


def intrinsics(image_size: tuple[int, int] = IMAGE_SIZE, hfov_deg: float = HFOV_DEG) -> tuple[float, float, float]:
    """(focal length in pixels, cx, cy) of the square-pixel pinhole cameras."""
    h, w = image_size
    f = 0.5 * w / np.tan(np.deg2rad(hfov_deg) / 2)
    return float(f), 0.5 * w, 0.5 * h


def camera_rays(yaw: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Ego-frame ray directions (not normalised; unit forward component) through pixel
    coordinates ``u`` (column) and ``v`` (row) of the camera with heading ``yaw``."""
    f, cx, cy = intrinsics()
    fwd = np.ones_like(u, dtype=np.float64)
    left = -(u - cx) / f
    up = -(v - cy) / f
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([c * fwd - s * left, s * fwd + c * left, up], axis=-1)


def _pixel_rays(yaw: float) -> RayBundle:
    h, w = IMAGE_SIZE
    v, u = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    d = camera_rays(yaw, u.ravel(), v.ravel())
    return RayBundle(d / np.linalg.norm(d, axis=1, keepdims=True))


_RAYS = [_pixel_rays(y) for y in CAMERA_YAWS]


def render(scene: Scene) -> np.ndarray:
    """Render all cameras of ``scene``: float32 [num_cams, 3, H, W] in [0, 1] (deterministic)."""
    rng = np.random.default_rng([scene.seed, 2])
    sun_az = rng.uniform(-np.pi, np.pi)
    sun = np.array([np.cos(sun_az) * 0.6, np.sin(sun_az) * 0.6, 0.8])
    sun /= np.linalg.norm(sun)
    ground_albedo = rng.uniform(0.3, 0.45)
    h, w = IMAGE_SIZE
    images = []
    for rays in _RAYS:
        dirs = rays.dirs
        t, hit, normal = raycast(scene, CAMERA_ORIGIN, rays)
        shade = 0.35 + 0.65 * np.clip(normal @ sun, 0.0, 1.0)
        rgb = np.empty((len(dirs), 3))
        sky = hit == HIT_NONE
        rgb[sky] = np.array([0.55, 0.7, 0.95]) * (0.8 + 0.2 * dirs[sky, 2:3])
        ground = hit == HIT_GROUND
        tex = ground_albedo + rng.normal(0.0, 0.04, int(ground.sum()))
        fog = np.exp(-t[ground] / 80.0)
        rgb[ground] = (tex * shade[ground])[:, None] * fog[:, None] + (1 - fog[:, None]) * 0.6
        obj = hit >= 0
        rgb[obj] = scene.color[hit[obj]] * shade[obj, None]
        rgb += rng.normal(0.0, 0.02, rgb.shape)
        images.append(np.clip(rgb, 0.0, 1.0).T.reshape(3, h, w))
    return np.stack(images).astype(np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
    """Per-channel normalisation with :data:`IMAGE_MEAN` / :data:`IMAGE_STD` (channel axis -3)."""
    mean = np.asarray(IMAGE_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGE_STD, np.float32)[:, None, None]
    return (images - mean) / std
