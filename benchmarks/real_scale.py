"""A nuScenes-sized CenterPoint through every stage of the engine: time and peak memory per stage.

    .venv/bin/python benchmarks/real_scale.py [--batches 1 4] [--voxels 90000] [--threads 1] [--profile]
                                              [--save-histograms PATH] [--trim]

Model (random weights; BN statistics set by one training-mode forward, so activations keep their scale
through depth): the zoo's ``SparseEncoder`` on nuScenes' grid -- 1440 x 1440 x 41 cells of 0.075 m (x, y)
and 0.2 m (z) over [-54, 54] m x [-54, 54] m x [-5, 3.2] m, 5 point features (x, y, z, intensity, time lag),
SpMiddleResNetFHD-like widths 16-32-64-128 with two residual blocks per stage -- and a BEV part on its
180 x 180 x 256 map: SECOND (128, 256 channels, strides 1, 2), SECONDFPN (128 + 128, upsampling 1, 2), a
centre head (64 channels, 10 classes). The recipe is ``recipes/centerpoint_int8.yaml`` (the same fusions,
rules, share groups, disable list and mse calibration) with this model and data, and an ``onnx-sparse``
export of the encoder (``output_bound`` raised to the batch's point counts) and an ``onnx-qdq`` export of
the BEV part.

Data (an equivalent generator; the zoo's synthetic lidar covers a 51 m square at 0.4 m): 10 aggregated
sweeps of a 32-beam spinning lidar (elevations -30 to +10 degrees, 1080 azimuth steps, 1.8 m above ground)
cast against a ground plane, building facades at 25-50 m and 60 random car-sized boxes, plus range noise;
points are voxelised on the nuScenes grid (mean of the points per voxel) and the frame is cut to
``--voxels`` voxels (default 90,000, inside nuScenes' 60k-120k; nuScenes' ``max_voxels`` caps it the same
way). Every stage is one call of the engine's own functions; each batch size runs in its own process
(``--child``), which reports wall time and the peak resident memory above the stage's start, sampled every
2 ms from ``/proc/self/statm`` (tracemalloc does not see torch's allocations), plus ``ru_maxrss``.
glibc keeps freed memory for reuse, so a stage that fits in what earlier stages freed shows little
or nothing above its start; ``--trim`` calls ``malloc_trim(0)`` before each stage (freed memory goes
back to the system first), so each stage's figure is its own.
``--profile`` adds the five functions with the most own time per stage (cProfile). ``--save-histograms PATH``
writes the collected histograms (one batch size) for ``benchmarks/amax_search.py --histograms PATH``;
``benchmarks/calibration_speed.py --real-scale`` compares statistics collection with the FP32 forward on
this model, interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PC_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.2)
VOXEL = (0.075, 0.075, 0.2)
GRID = (41, 1440, 1440)  # z, y, x
NUM_CLASSES = 10


# ----------------------------------------------------------------------------- model
class RealScaleBEV(nn.Module):
    """SECOND + SECONDFPN + centre head on the 180 x 180 BEV map (attribute names as the zoo's)."""

    def __init__(self, in_channels: int = 256) -> None:
        super().__init__()
        from recipe_engine.zoo.bev_blocks import SECOND, SECONDFPN, CenterHead

        self.backbone = SECOND(in_channels, (128, 256), (2, 2), (1, 2))
        self.neck = SECONDFPN((128, 256), (128, 128), (1, 2))
        self.head = CenterHead(256, NUM_CLASSES, 64)

    def forward(self, bev_features: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(bev_features)))


class RealScaleCenterPoint(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from recipe_engine.zoo.sparse_encoder import SparseEncoder

        self.encoder = SparseEncoder(5, GRID, (16, 32, 64, 128), 128, 2)
        self.bev = RealScaleBEV(self.encoder.out_channels)

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        return self.bev(self.encoder(voxel_features, coors, batch_size))


def build() -> RealScaleCenterPoint:
    return RealScaleCenterPoint().eval()


def forward_batch(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["voxel_features"], batch["coors"], int(batch["batch_size"]))


def bn_warmup(model: nn.Module, batch: dict) -> None:
    """One training-mode forward with BN momentum 1: running statistics = this batch's (random weights)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        forward_batch(model, batch)
    model.eval()


def calibration_data() -> list:  # named by the recipe; the benchmark passes its batches itself
    raise RuntimeError("real_scale.py passes its calibration batches directly")


# ----------------------------------------------------------------------------- data
def _boxes_hit(origins: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance along each ray to the nearest of the axis-aligned boxes (inf: none); slab test, float32."""
    dirs = np.where(np.abs(dirs) < 1e-9, 1e-9, dirs).astype(np.float32)
    inv = (1.0 / dirs)[:, None]
    t1 = (lo[None].astype(np.float32) - origins[:, None].astype(np.float32)) * inv
    t2 = (hi[None].astype(np.float32) - origins[:, None].astype(np.float32)) * inv
    near = np.minimum(t1, t2).max(axis=2)
    far = np.maximum(t1, t2).min(axis=2)
    t = np.where((far >= near) & (near > 0.5), near, np.float32(np.inf))
    return t.min(axis=1)


def make_frame(seed: int, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 5] float32, coords [N, 3] int32 (z, y, x)) of one 10-sweep frame."""
    rng = np.random.default_rng(seed)
    centers = np.c_[rng.uniform(-50, 50, (60, 2)), np.full(60, -1.0)]
    half = np.c_[rng.uniform(1.8, 2.4, 60), rng.uniform(0.8, 1.0, 60), np.full(60, 0.8)]
    walls_lo = np.array([[-60, 30 + rng.uniform(0, 15), -1.8], [-60, -48, -1.8], [30 + rng.uniform(0, 15), -60, -1.8]])
    walls_hi = walls_lo + np.array([[120, 1, 8], [120, 1, 8], [1, 120, 8]])
    lo, hi = np.r_[centers - half, walls_lo], np.r_[centers + half, walls_hi]
    elevations = np.deg2rad(np.linspace(-30, 10, 32))
    points = []
    for sweep in range(10):
        azimuth = np.deg2rad(np.linspace(0, 360, 1080, endpoint=False) + rng.uniform(0, 0.33))
        el, az = np.meshgrid(elevations, azimuth, indexing="ij")
        dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
        origin = np.array([0.5 * sweep * 0.05, 0.0, 0.0])
        origins = np.broadcast_to(origin, dirs.shape)
        with np.errstate(divide="ignore"):
            t_ground = np.where(dirs[:, 2] < 0, -1.8 / dirs[:, 2], np.inf)
        t = np.minimum(t_ground, _boxes_hit(origins, dirs, lo, hi))
        t = t + rng.normal(0, 0.02, t.shape)
        keep = np.isfinite(t) & (t < 70)
        xyz = origins[keep] + dirs[keep] * t[keep, None]
        points.append(np.c_[xyz, rng.uniform(0, 1, keep.sum()), np.full(keep.sum(), 0.05 * sweep)])
    pts = np.concatenate(points).astype(np.float32)
    lo_r, size = np.asarray(PC_RANGE[:3]), np.asarray(VOXEL)
    cell = np.floor((pts[:, :3] - lo_r) / size).astype(np.int64)
    inside = np.all((cell >= 0) & (cell < np.array(GRID[::-1])), axis=1)
    pts, cell = pts[inside], cell[inside]
    linear = (cell[:, 2] * GRID[1] + cell[:, 1]) * GRID[2] + cell[:, 0]
    order = rng.permutation(len(np.unique(linear)))
    uniq, inverse = np.unique(linear, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq))
    features = np.stack([np.bincount(inverse, pts[:, k], len(uniq)) for k in range(5)], 1) / counts[:, None]
    features = features.astype(np.float32)
    coords = np.stack([uniq // (GRID[1] * GRID[2]), (uniq // GRID[2]) % GRID[1], uniq % GRID[2]], 1).astype(np.int32)
    pick = np.sort(order[:max_voxels])
    return features[pick], coords[pick]


def make_batch(batch_size: int, seed: int, max_voxels: int) -> dict:
    frames = [make_frame(seed * 100 + i, max_voxels) for i in range(batch_size)]
    coords = np.concatenate([np.c_[np.full(len(c), i, np.int32), c] for i, (_, c) in enumerate(frames)])
    return {"voxel_features": torch.from_numpy(np.concatenate([f for f, _ in frames])),
            "coors": torch.from_numpy(coords), "batch_size": torch.tensor(batch_size)}


# ----------------------------------------------------------------------------- measuring
class PeakRss:
    """Resident memory sampled every 2 ms on a thread; ``peak`` since the last ``reset``."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.now()
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.now())
            time.sleep(0.002)

    def reset(self, trim: bool = False) -> int:
        if trim:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.peak = start = self.now()
        return start


RECIPE = """
recipe: real-scale-centerpoint
version: 1.0.0
extends: {root}/recipes/centerpoint_int8.yaml
model: {{factory: "real_scale:build"}}
data:
  calibration: {{factory: "real_scale:calibration_data"}}
  validation: null
  train: null
  forward: "real_scale:forward_batch"
  evaluate: null
  loss: null
calibration: {{method: mse, batches: {batches}}}
export: [{export}]
"""


def save_histograms(state, path: str) -> None:
    """Every histogram quantizer's statistics (for ``benchmarks/amax_search.py --histograms``)."""
    from recipe_engine.quant import backend

    saved = []
    for names, quantizer in state.unique():
        stats = backend.calibration_statistics(quantizer)
        if stats and "hist" in stats:
            info = backend.describe(quantizer)
            saved.append({"name": names[0], "hist": stats["hist"].clone(), "edges": stats["edges"].clone(),
                          "num_bits": int(info["num_bits"]), "unsigned": bool(info["unsigned"])})
    torch.save(saved, path)


def child(batch_size: int, voxels: int, calib_batches: int, profile: bool, save: str | None = None,
          trim: bool = False) -> list[dict]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe_engine.calib.collect import collect_statistics
    from recipe_engine.calib.loop import finish_calibration
    from recipe_engine.export.runner import run_exports
    from recipe_engine.pipeline import apply
    from recipe_engine.quant.apply import disable_matching, get_state
    from recipe_engine.recipe.loader import load_recipe

    rss = PeakRss()
    rows: list[dict] = []

    def stage(name: str, fn, note: str = ""):
        start = rss.reset(trim)
        tick = time.perf_counter()
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        result = fn()
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - tick
        top = ""
        if profiler:
            stats = pstats.Stats(profiler, stream=io.StringIO()).sort_stats("tottime")
            worst = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:5]  # (file, line, name): (.., tottime, ..)
            top = "; ".join(f"{Path(k[0]).name}:{k[2]} {v[2]:.1f} s" for k, v in worst)
        rows.append({"batch": batch_size, "stage": name, "seconds": seconds, "peak_mib": (rss.peak - start) / 2**20,
                     "rss_mib": rss.peak / 2**20, "note": note, "profile": top})
        print(f"[b{batch_size}] {name}: {seconds:.1f} s, +{(rss.peak - start) / 2**20:.0f} MiB", file=sys.stderr)
        return result

    batches = stage("data (lidar sweeps -> voxels)",
                    lambda: [make_batch(batch_size, seed, voxels) for seed in range(calib_batches)])
    counts = [len(b["voxel_features"]) for b in batches]
    rows[-1]["note"] = f"{calib_batches} batches, {sum(counts) // len(counts)} voxels per batch"
    torch.manual_seed(0)
    fp32 = build()

    stage("setup (random weights, BN statistics)", lambda: bn_warmup(fp32, batches[0]))
    model = build()
    model.load_state_dict(fp32.state_dict())

    def fp32_forward() -> None:
        with torch.no_grad():
            for b in batches:
                forward_batch(fp32, b)

    stage("FP32 forward", fp32_forward, f"{calib_batches} batches")
    with tempfile.TemporaryDirectory() as tmp:
        bound = max(200000, 4 * max(counts))
        paths = {}
        for key, export in (("none", ""), ("sparse", "{format: onnx-sparse, module: encoder, path: scn.onnx, "
                                                     f"layout: zyx, output_bound: {bound}}}"),
                            ("qdq", "{format: onnx-qdq, module: bev, path: bev.onnx}")):
            paths[key] = Path(tmp, f"{key}.yaml")
            paths[key].write_text(RECIPE.format(root=ROOT, batches=calib_batches, export=export))
        loaded = load_recipe(paths["none"])
        stage("apply (fuse + quantizers)", lambda: apply(model, loaded, batches[:1], forward_batch))
        state = get_state(model)
        stage("statistics collection", lambda: collect_statistics(model, state, batches, forward_batch,
                                                                  calib_batches, False),
              f"{calib_batches} batches")
        if save:
            save_histograms(state, save)
        stage("amax (all quantizers)", lambda: finish_calibration(state, loaded.spec.calibration),
              f"{loaded.spec.calibration.method}, {len(list(state.unique()))} quantizers")
        disable_matching(state, loaded.spec.disable)  # as calibrate() does: the recipe's full-precision layers
        from recipe_engine.quant import backend

        bins = [len(s["hist"]) for s in (backend.calibration_statistics(q) for _, q in state.unique()) if s and "hist" in s]
        rows[-1]["note"] += f", histogram bins {min(bins)}-{max(bins)} (median {int(np.median(bins))})"

        def fake_quant() -> None:
            with torch.no_grad():
                for b in batches:
                    forward_batch(model, b)

        stage("fake-quant forward", fake_quant, f"{calib_batches} batches")
        for key, name in (("sparse", "onnx-sparse export + reference runtime"), ("qdq", "onnx-qdq export + onnxruntime")):
            out = Path(tmp, key)
            result = stage(name, lambda key=key, out=out: run_exports(model, load_recipe(paths[key]), out, batches,
                                                                       forward_batch))
            figures = result[0]
            rows[-1]["note"] = (f"{figures['status']}, SQNR {figures['sqnr_runtime_db']:.1f} dB "
                                f"(PyTorch {figures['sqnr_pytorch_db']:.1f})")
    rows.append({"batch": batch_size, "stage": "process peak (ru_maxrss)", "seconds": float("nan"),
                 "peak_mib": float("nan"), "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 "note": "", "profile": ""})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4], help="batch sizes (frames per batch)")
    parser.add_argument("--voxels", type=int, default=90000, help="voxels per frame")
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--save-histograms", default=None, metavar="PATH",
                        help="save the collected histograms (torch.save; with one batch size) for amax_search.py")
    parser.add_argument("--trim", action="store_true",
                        help="malloc_trim(0) before each stage: peaks above the stage's start without reused heap")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        with contextlib.redirect_stdout(sys.stderr):
            rows = child(args.child, args.voxels, args.calib_batches, args.profile, args.save_histograms,
                         args.trim)
        print(json.dumps(rows))
        return
    rows = []
    for batch in args.batches:
        command = [sys.executable, __file__, "--child", str(batch), "--voxels", str(args.voxels),
                   "--calib-batches", str(args.calib_batches), "--threads", str(args.threads)]
        command += ["--profile"] if args.profile else []
        command += ["--save-histograms", args.save_histograms] if args.save_histograms else []
        command += ["--trim"] if args.trim else []
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "RECIPE_NO_PROGRESS": "1"})
        if done.returncode != 0:
            print(f"batch {batch}: the child process failed (exit {done.returncode})", file=sys.stderr)
            continue
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    trimmed = ", malloc_trim before each stage" if args.trim else ""
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, {args.voxels} voxels per "
          f"frame, {args.calib_batches} calibration batches per run{trimmed}\n")
    print("| batch | stage | s | peak MiB above stage start | process RSS peak MiB | note |")
    print("|---:|---|---:|---:|---:|---|")
    for r in rows:
        seconds = "-" if r["seconds"] != r["seconds"] else f"{r['seconds']:.{2 if r['seconds'] < 1 else 1}f}"
        peak = "-" if r["peak_mib"] != r["peak_mib"] else f"{r['peak_mib']:.0f}"
        print(f"| {r['batch']} | {r['stage']} | {seconds} | {peak} | {r['rss_mib']:.0f} | {r['note']} |")
    if args.profile:
        print("\n| batch | stage | most own time (cProfile) |\n|---:|---|---|")
        for r in rows:
            if r["profile"]:
                print(f"| {r['batch']} | {r['stage']} | {r['profile']} |")


if __name__ == "__main__":
    main()
