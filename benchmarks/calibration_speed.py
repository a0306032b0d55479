"""Statistics collection vs the FP32 forward on the zoo (or real-scale) CenterPoint, before/after, in one process.

    .venv/bin/python benchmarks/calibration_speed.py [--repeats 5] [--threads 1] [--count 16 --batch-size 4]
    .venv/bin/python benchmarks/calibration_speed.py --real-scale [--count 2 --batch-size 1 --voxels 90000]

Rows, each the median of ``--repeats`` (wall and process CPU time), measured round-robin in one process:
the FP32 model's forward over the calibration batches; ``collect_statistics`` with pytorch-quantization's
own ``HistogramCalibrator.collect``/``MaxCalibrator.collect`` (before); with the engine's collection inline
(``RECIPE_CALIB_ASYNC=0``: one pass less, repeated tensors reused) and with histograms binned on the
background thread (the default), each also with the weights' max calibrators reducing every weight on every
batch as upstream's do (the engine's previous state; now a weight that did not change is not reduced
again); with histogram collection switched off (the weights' max calibrators and the quantized model's
structure); and with every calibrator off (the structure alone: fused modules, quantizer calls, op-site
hooks). Then the amax computation for every quantizer. The amax of every quantizer is compared between
the upstream collection and the engine's (the script fails if one differs). CPU time counts both threads:
the background thread moves work off the forward's path, it does not remove it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from statistics import median

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def real_scale_setup(batch_size: int, voxels: int, count: int):
    """(recipe, batches, forward, FP32 model, model to quantize) of ``benchmarks/real_scale.py``."""
    import tempfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_scale

    from recipe_engine.recipe.loader import load_recipe

    batches = [real_scale.make_batch(batch_size, seed, voxels) for seed in range(count)]
    torch.manual_seed(0)
    fp32 = real_scale.build()
    real_scale.bn_warmup(fp32, batches[0])
    model = real_scale.build()
    model.load_state_dict(fp32.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "recipe.yaml")
        path.write_text(real_scale.RECIPE.format(root=ROOT, batches=count, export=""))
        loaded = load_recipe(path)
    return loaded, batches, real_scale.forward_batch, fp32, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--count", type=int, default=None, help="calibration scenes (real scale: batches; 16 / 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="frames per batch (4; real scale 1)")
    parser.add_argument("--real-scale", action="store_true",
                        help="benchmarks/real_scale.py's nuScenes-sized CenterPoint instead (--count batches of "
                             "--batch-size frames, --voxels voxels per frame)")
    parser.add_argument("--voxels", type=int, default=90000)
    args = parser.parse_args()
    args.count = args.count or (2 if args.real_scale else 16)
    args.batch_size = args.batch_size or (1 if args.real_scale else 4)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RECIPE_NO_PROGRESS", "1")
    from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator

    from recipe_engine import data as data_mod
    from recipe_engine.backends.pytorch_quantization.calibrators import (
        FastHistogramCalibrator,
        FastMaxCalibrator,
    )
    from recipe_engine.calib.collect import collect_statistics
    from recipe_engine.calib.loop import finish_calibration
    from recipe_engine.pipeline import apply
    from recipe_engine.quant import backend
    from recipe_engine.quant.apply import get_state
    from recipe_engine.recipe.loader import load_recipe

    if args.real_scale:
        count = args.count
        loaded, batches, forward, fp32, model = real_scale_setup(args.batch_size, args.voxels, count)
        apply(model, loaded, batches[:1], forward)
    else:
        count = args.count // args.batch_size
        loaded = load_recipe(ROOT / "recipes" / "centerpoint_int8.yaml", overrides=[
            f"data.calibration.kwargs.count={args.count}", f"data.calibration.kwargs.batch_size={args.batch_size}",
            f"calibration.batches={count}", "export=[]"])
        batches = list(data_mod.make_data(loaded, "calibration"))
        forward = data_mod.forward_fn(loaded)
        fp32 = data_mod.build_model(loaded).eval()
        model = data_mod.build_model(loaded).eval()
        apply(model, loaded, batches, forward)
    state = get_state(model)
    ours, ours_max = FastHistogramCalibrator.collect, FastMaxCalibrator.collect

    def fp32_forward() -> None:
        with torch.no_grad():
            for batch in batches:
                forward(fp32, batch)

    calibrators = [getattr(q, "_calibrator", None) for _, q in state.unique()]
    bins = {id(c): c._num_bins for c in calibrators if isinstance(c, HistogramCalibrator)}

    def collect(mode: str) -> None:
        for calibrator in calibrators:  # fresh statistics; reset() keeps a grown bin count (as upstream's)
            if calibrator is not None:
                calibrator.reset()
                if id(calibrator) in bins:
                    calibrator._num_bins = bins[id(calibrator)]
        off = lambda self, x: None  # noqa: E731
        FastHistogramCalibrator.collect = {"upstream": HistogramCalibrator.collect, "off": off, "none": off}.get(
            mode, ours)
        every_batch = mode in ("upstream", "inline-prev", "async-prev")
        FastMaxCalibrator.collect = off if mode == "none" else MaxCalibrator.collect if every_batch else ours_max
        os.environ["RECIPE_CALIB_ASYNC"] = "0" if mode.startswith("inline") else "1"
        try:
            collect_statistics(model, state, batches, forward, count, False)
        finally:
            FastHistogramCalibrator.collect, FastMaxCalibrator.collect = ours, ours_max

    def amax_of(mode: str) -> dict[str, torch.Tensor]:
        collect(mode)
        finish_calibration(state, loaded.spec.calibration)
        return {names[0]: backend.get_amax(q).clone() for names, q in state.unique()}

    modes = {"FP32 forward (no quantizers)": fp32_forward,
             "collection, pytorch-quantization collect (before)": lambda: collect("upstream"),
             "collection, engine, inline, weights reduced every batch (previous)": lambda: collect("inline-prev"),
             "collection, engine, inline (RECIPE_CALIB_ASYNC=0)": lambda: collect("inline"),
             "collection, engine, background thread, weights reduced every batch (previous)":
                 lambda: collect("async-prev"),
             "collection, engine, background thread (default)": lambda: collect("async"),
             "collection with histograms off (weights' max calibrators + structure)": lambda: collect("off"),
             "collection with every calibrator off (structure alone)": lambda: collect("none")}
    fp32_forward()
    collect("async")
    wall = {k: [] for k in modes}
    cpu = {k: [] for k in modes}
    for _ in range(args.repeats):
        for name, fn in modes.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    before, after = amax_of("upstream"), amax_of("async")
    differ = [k for k in before if not torch.equal(before[k], after[k])]
    collect("async")
    amax_runs = []
    for _ in range(args.repeats):
        tick = time.perf_counter()
        finish_calibration(state, loaded.spec.calibration)
        amax_runs.append(time.perf_counter() - tick)
    amax_seconds = median(amax_runs)

    voxels = sum(len(b["voxel_features"]) for b in batches) // len(batches)
    load = os.getloadavg()[0]
    what = "real-scale (nuScenes-sized) CenterPoint" if args.real_scale else "zoo CenterPoint"
    print(f"{what}, {len(batches)} batches of ~{voxels} voxels, torch {torch.__version__}, {args.threads} "
          f"thread(s), {os.cpu_count()} CPUs, load average {load:.1f} at the end; median of {args.repeats}\n")
    print("| what | wall s | / FP32 | CPU s | / FP32 |")
    print("|---|---:|---:|---:|---:|")
    base_w, base_c = median(wall["FP32 forward (no quantizers)"]), median(cpu["FP32 forward (no quantizers)"])
    for name in modes:
        w, c = median(wall[name]), median(cpu[name])
        print(f"| {name} | {w:.3f} | {w / base_w:.2f}x | {c:.3f} | {c / base_c:.2f}x |")
    method = loaded.spec.calibration.method
    print(f"| amax, all {len(before)} quantizers ({method}) | {amax_seconds:.3f} | | | |")
    print(f"\namax identical, upstream collection vs the engine's: {len(before) - len(differ)} / {len(before)}")
    if differ:
        raise SystemExit(f"amax differs for {differ[:5]}")


if __name__ == "__main__":
    main()
