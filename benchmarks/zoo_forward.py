"""Forward time of the zoo models (batch 1, CPU, eval mode) as a markdown table.

    .venv/bin/python benchmarks/zoo_forward.py [--repeats 10] [--threads 1]

Uses the committed checkpoints when present (random weights otherwise; timing is the same).
A second table times synthetic data generation per scene. One thread by default: spconv's CPU
convs run single-threaded anyway (``recipe_engine.compat.spconv_cpu``), and on a shared
2-core machine extra OpenMP threads mostly add contention.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from recipe_engine.zoo import bevfusion, centerpoint, digits, images, lidar
from recipe_engine.zoo.checkpoint import checkpoint_path
from recipe_engine.zoo.geometry import make_scene

#: Forward budget per model, batch 1 on CPU (ms).
BUDGET_MS = {"centerpoint": 500.0, "bevfusion": 500.0, "digits": 20.0}
#: Generation budget per scene (ms).
DATA_BUDGET_MS = {"lidar frame (scan + voxels + labels)": 50.0, "camera images (2 x 64x176)": 50.0}


def _time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} repeats, batch 1, CPU\n")
    print("| model | weights | input | median ms | p90 ms | budget ms | ok |")
    print("|---|---|---|---:|---:|---:|---|")
    for name, mod in (("centerpoint", centerpoint), ("bevfusion", bevfusion), ("digits", digits)):
        trained = checkpoint_path(name).exists()
        model = mod.build(pretrained=trained).eval()
        batch = mod.val_data(count=1, batch_size=1)[0]
        if "voxel_features" in batch:
            desc = f"{len(batch['voxel_features'])} voxels"
            if "images" in batch:
                desc += " + " + "x".join(str(s) for s in batch["images"].shape[1:]) + " images"
        else:
            desc = "x".join(str(s) for s in batch["image"].shape[1:]) + " image"

        def run(model=model, mod=mod, batch=batch) -> None:
            with torch.no_grad():
                mod.forward_batch(model, batch)

        med, p90 = _time(run, args.repeats)
        budget = BUDGET_MS[name]
        print(f"| {name} | {'trained' if trained else 'random'} | {desc} | {med:.1f} | {p90:.1f} | "
              f"{budget:.0f} | {'yes' if med <= budget else 'NO'} |")

    seeds = iter(range(2_000_000, 2_000_000 + 10_000))
    scenes = [make_scene(s) for s in range(2_000_000, 2_000_000 + args.repeats + 2)]
    scene_iter = iter(scenes)
    print("\n| data (per scene) | median ms | p90 ms | budget ms | ok |")
    print("|---|---:|---:|---:|---|")
    for label, fn in (("lidar frame (scan + voxels + labels)", lambda: lidar.make_frame(next(seeds))),
                      ("camera images (2 x 64x176)", lambda: images.render(next(scene_iter)))):
        med, p90 = _time(fn, args.repeats)
        budget = DATA_BUDGET_MS[label]
        print(f"| {label} | {med:.1f} | {p90:.1f} | {budget:.0f} | {'yes' if med <= budget else 'NO'} |")


if __name__ == "__main__":
    main()
