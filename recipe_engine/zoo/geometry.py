"""Synthetic 3D street scenes and a vectorised ray caster.

A scene is a tilted, noisy ground plane plus a set of solid objects (oriented boxes and
vertical cylinders). The same scene is seen by the simulated lidar (:mod:`.lidar`) and the
virtual cameras (:mod:`.images`), both through :func:`raycast`, so the two modalities agree.

Coordinates are ego-centric metres: x forward, y left, z up; the sensors sit at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Detection classes (label ids are positions in this tuple).
CLASSES: tuple[str, ...] = ("car", "pedestrian", "cyclist")
#: Category id of objects that are clutter (not a detection target).
CLUTTER = -1
#: Object shape codes.
BOX, CYLINDER = 0, 1
#: Hit ids returned by :func:`raycast` for non-object hits.
HIT_GROUND, HIT_NONE = -1, -2

#: Nominal ground height below the sensor (m).
GROUND_Z = -1.8
#: Objects are placed in this ring around the sensor (m) and inside the BEV square.
PLACE_RADIUS = (3.0, 24.0)
PLACE_HALF_EXTENT = 24.5
#: Minimum centre distance between any two objects (m): larger than a 1.6 m cell diagonal, so
#: two targets never share a heatmap cell.
MIN_CENTER_DISTANCE = 2.3


@dataclass(frozen=True)
class SceneLayout:
    """Where and how many objects a scene holds. The default is the 51.2 m CenterPoint scene;
    :mod:`.pillar_data` uses a larger one (far objects). ``count_scale`` multiplies every count range."""

    place_radius: tuple[float, float] = PLACE_RADIUS
    half_extent: float = PLACE_HALF_EXTENT
    far_min_radius: float = 18.0  # walls are placed in [far_min_radius, place_radius[1]]
    count_scale: float = 1.0

    def counts(self, lo: int, hi: int) -> tuple[int, int]:
        """A count range scaled by ``count_scale`` (unchanged at 1.0)."""
        if self.count_scale == 1.0:
            return lo, hi
        return int(round(lo * self.count_scale)), int(round(hi * self.count_scale))


DEFAULT_LAYOUT = SceneLayout()


@dataclass(frozen=True)
class Scene:
    """One synthetic scene; all arrays have one row per object.

    ``boxes`` columns: x, y (centre), z (bottom), l, w, h (m), yaw (rad). For cylinders l = w =
    diameter. ``category`` is a :data:`CLASSES` index or :data:`CLUTTER`.
    """

    seed: int
    ground: tuple[float, float, float]  # z = g0 + gx * x + gy * y
    boxes: np.ndarray  # float64 [K, 7]
    shape: np.ndarray  # int64 [K]
    category: np.ndarray  # int64 [K]
    reflectivity: np.ndarray  # float64 [K]
    color: np.ndarray  # float64 [K, 3], RGB in [0, 1]

    def ground_height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground z below (x, y)."""
        g0, gx, gy = self.ground
        return g0 + gx * x + gy * y


# (category, shape, (l range), (w range), (h range), count range)
_TARGET_SPECS = (
    (0, BOX, (3.8, 5.0), (1.7, 2.0), (1.4, 1.8), (4, 9)),
    (1, CYLINDER, (0.5, 0.7), None, (1.5, 1.9), (3, 8)),
    (2, BOX, (1.6, 1.9), (0.5, 0.7), (1.5, 1.8), (2, 5)),
)
# Clutter: poles, bins (pedestrian-sized boxes), bushes (low boxes), walls.
_CLUTTER_SPECS = (
    (CYLINDER, (0.16, 0.4), None, (2.5, 5.0), (1, 4)),
    (BOX, (0.5, 0.8), (0.5, 0.8), (0.8, 1.2), (0, 3)),
    (BOX, (0.8, 2.5), (0.8, 2.0), (0.4, 1.1), (1, 4)),
    (BOX, (5.0, 12.0), (0.3, 0.5), (1.0, 3.0), (0, 2)),
)


def _sample_xy(rng: np.random.Generator, placed: list[tuple[float, float, float]], radius: float,
               far: bool = False, layout: SceneLayout = DEFAULT_LAYOUT) -> tuple[float, float] | None:
    lo, hi = (layout.far_min_radius, layout.place_radius[1]) if far else layout.place_radius
    for _ in range(30):
        r = rng.uniform(lo, hi)
        a = rng.uniform(-np.pi, np.pi)
        x, y = r * np.cos(a), r * np.sin(a)
        if max(abs(x), abs(y)) > layout.half_extent - radius * 0.5:
            continue
        if all(np.hypot(x - px, y - py) >= max(MIN_CENTER_DISTANCE, radius + pr + 0.2)
               for px, py, pr in placed):
            return x, y
    return None


def make_scene(seed: int, layout: SceneLayout = DEFAULT_LAYOUT) -> Scene:
    """Build the scene for ``seed`` (deterministic: same seed and layout, same scene)."""
    rng = np.random.default_rng(seed)
    ground = (GROUND_Z + rng.uniform(-0.1, 0.1), rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01))
    rows: list[list[float]] = []
    shapes: list[int] = []
    cats: list[int] = []
    refl: list[float] = []
    colors: list[np.ndarray] = []
    placed: list[tuple[float, float, float]] = []

    def add(cat: int, shp: int, lr: tuple[float, float], wr: tuple[float, float] | None,
            hr: tuple[float, float], far: bool = False) -> None:
        length = rng.uniform(*lr)
        width = length if wr is None else rng.uniform(*wr)
        height = rng.uniform(*hr)
        radius = 0.5 * np.hypot(length, width)
        xy = _sample_xy(rng, placed, radius, far=far, layout=layout)
        if xy is None:
            return
        x, y = xy
        yaw = rng.uniform(-np.pi, np.pi)
        if cat == 0 and rng.random() < 0.6:  # cars tend to be aligned with the road
            yaw = rng.choice([0.0, np.pi]) + rng.normal(0.0, 0.1)
        z = ground[0] + ground[1] * x + ground[2] * y
        rows.append([x, y, z, length, width, height, yaw])
        shapes.append(shp)
        cats.append(cat)
        placed.append((x, y, radius))
        base = {0: (0.5, 0.9), 1: (0.1, 0.35), 2: (0.3, 0.6)}.get(cat, (0.2, 0.8))
        refl.append(rng.uniform(*base))
        colors.append(rng.uniform(0.05, 0.95, size=3))

    for cat, shp, lr, wr, hr, cnt in _TARGET_SPECS:
        lo, hi = layout.counts(*cnt)
        for _ in range(rng.integers(lo, hi + 1)):
            add(cat, shp, lr, wr, hr)
    for i, (shp, lr, wr, hr, cnt) in enumerate(_CLUTTER_SPECS):
        lo, hi = layout.counts(*cnt)
        for _ in range(rng.integers(lo, hi + 1)):
            add(CLUTTER, shp, lr, wr, hr, far=(i == 3))
    k = len(rows)
    return Scene(
        seed=seed,
        ground=tuple(float(g) for g in ground),
        boxes=np.asarray(rows, dtype=np.float64).reshape(k, 7),
        shape=np.asarray(shapes, dtype=np.int64),
        category=np.asarray(cats, dtype=np.int64),
        reflectivity=np.asarray(refl, dtype=np.float64),
        color=np.asarray(colors, dtype=np.float64).reshape(k, 3),
    )


def _hit_box(p: np.ndarray, d: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test in the box frame; returns entry distance (inf on miss) and entry axis."""
    inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1 = (-half - p) * inv
    t2 = (half - p) * inv
    tnear = np.minimum(t1, t2)
    tfar = np.maximum(t1, t2).min(axis=1)
    axis = tnear.argmax(axis=1)
    t0 = tnear.max(axis=1)
    hit = (tfar >= t0) & (t0 > 1e-6)
    return np.where(hit, t0, np.inf), axis


def _hit_cylinder(p: np.ndarray, d: np.ndarray, radius: float, height: float) -> np.ndarray:
    """Vertical cylinder (axis z, bottom at z=0) entry distance, inf on miss."""
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2.0 * (p[:, 0] * d[:, 0] + p[:, 1] * d[:, 1])
    c = p[:, 0] ** 2 + p[:, 1] ** 2 - radius**2
    disc = b * b - 4.0 * a * c
    ok = (disc >= 0) & (a > 1e-12)
    t_side = np.where(ok, (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * np.maximum(a, 1e-12)), np.inf)
    z_side = p[:, 2] + t_side * d[:, 2]
    t_side = np.where((t_side > 1e-6) & (z_side >= 0) & (z_side <= height), t_side, np.inf)
    dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
    t_cap = (height - p[:, 2]) / dz
    q = p[:, :2] + t_cap[:, None] * d[:, :2]
    cap_ok = (t_cap > 1e-6) & ((q**2).sum(axis=1) <= radius**2) & (p[:, 2] > height)
    return np.minimum(t_side, np.where(cap_ok, t_cap, np.inf))


class RayBundle:
    """Unit ray directions [R, 3] plus their azimuths sorted once, so :func:`raycast` only
    tests each object against the rays inside its angular extent."""

    def __init__(self, dirs: np.ndarray) -> None:
        self.dirs = np.ascontiguousarray(dirs, dtype=np.float64)
        az = np.arctan2(self.dirs[:, 1], self.dirs[:, 0])
        self.order = np.argsort(az, kind="stable")
        self.az_sorted = az[self.order]

    def __len__(self) -> int:
        return len(self.dirs)

    def within(self, center: float, half_angle: float) -> np.ndarray:
        """Indices of rays whose azimuth is within ``half_angle`` of ``center`` (wrapping)."""
        if half_angle >= np.pi:
            return self.order
        lo = (center - half_angle + np.pi) % (2 * np.pi) - np.pi
        hi = (center + half_angle + np.pi) % (2 * np.pi) - np.pi
        a = np.searchsorted(self.az_sorted, lo, side="left")
        b = np.searchsorted(self.az_sorted, hi, side="right")
        if lo <= hi:
            return self.order[a:b]
        return np.concatenate([self.order[a:], self.order[:b]])


def raycast(scene: Scene, origin: np.ndarray, rays: RayBundle | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast rays from ``origin`` [3] along unit directions (``RayBundle`` or array [R, 3]).

    Returns ``(t, hit_id, normal)``: distance (inf where nothing is hit), hit id (object index,
    :data:`HIT_GROUND` or :data:`HIT_NONE`) and the unit surface normal at the hit [R, 3].
    """
    if not isinstance(rays, RayBundle):
        rays = RayBundle(rays)
    dirs = rays.dirs
    origin = np.asarray(origin, dtype=np.float64)
    r = len(dirs)
    g0, gx, gy = scene.ground
    gnorm = np.array([-gx, -gy, 1.0]) / np.sqrt(gx * gx + gy * gy + 1.0)
    denom = dirs[:, 2] - gx * dirs[:, 0] - gy * dirs[:, 1]
    num = g0 + gx * origin[0] + gy * origin[1] - origin[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = num / denom
    t = np.where((denom < -1e-9) & (tg > 0), tg, np.inf)
    hit_id = np.where(np.isfinite(t), HIT_GROUND, HIT_NONE).astype(np.int64)
    normal = np.broadcast_to(gnorm, (r, 3)).copy()

    for k in range(len(scene.boxes)):
        x, y, zb, length, width, height, yaw = scene.boxes[k]
        rel = np.array([x, y]) - origin[:2]
        dist = np.hypot(*rel)
        bound = 0.5 * np.hypot(length, width)
        half_angle = np.pi if dist <= bound else np.arcsin(bound / dist) + 1e-3
        sel = rays.within(float(np.arctan2(rel[1], rel[0])), half_angle)
        if len(sel) == 0:
            continue
        c, s = np.cos(yaw), np.sin(yaw)
        rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # world -> object frame
        p = rot @ (origin - np.array([x, y, zb]))
        d = dirs[sel] @ rot.T
        if scene.shape[k] == BOX:
            p = p - np.array([0.0, 0.0, 0.5 * height])
            half = np.array([0.5 * length, 0.5 * width, 0.5 * height])
            tk, axis = _hit_box(np.broadcast_to(p, d.shape), d, half)
            n_local = np.zeros_like(d)
            rows = np.arange(len(sel))
            n_local[rows, axis] = -np.sign(d[rows, axis])
        else:
            pb = np.broadcast_to(p, d.shape)
            tk = _hit_cylinder(pb, d, 0.5 * length, height)
            q = pb + np.where(np.isfinite(tk), tk, 0.0)[:, None] * d
            n_local = np.concatenate([q[:, :2], np.zeros((len(sel), 1))], axis=1)
            on_cap = (q[:, :2] ** 2).sum(axis=1) < (0.499 * length) ** 2
            n_local[on_cap] = (0.0, 0.0, 1.0)
            n_local /= np.maximum(np.linalg.norm(n_local, axis=1, keepdims=True), 1e-9)
        closer = tk < t[sel]
        idx = sel[closer]
        t[idx] = tk[closer]
        hit_id[idx] = k
        normal[idx] = n_local[closer] @ rot  # object -> world
    return t, hit_id, normal
