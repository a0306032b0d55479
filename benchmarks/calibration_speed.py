"""Statistics collection vs the FP32 forward on the zoo CenterPoint, before/after, in one process.

    .venv/bin/python benchmarks/calibration_speed.py [--repeats 3] [--threads 1] [--count 16 --batch-size 4]

Rows, each the fastest of ``--repeats`` (wall and process CPU time), measured round-robin in one process:
the FP32 model's forward over the calibration batches; ``collect_statistics`` with pytorch-quantization's
own ``HistogramCalibrator.collect`` (before); with the engine's collection inline
(``RECIPE_CALIB_ASYNC=0``: one pass less, repeated tensors reused) and with histograms binned on the
background thread (the default); and with histogram collection switched off (what the rest costs: the
quantized model's structure and the weights' max calibrators). Then the amax computation for every
quantizer. The amax of every quantizer is compared between the upstream collection and the engine's (the
script fails if one differs). CPU time counts both threads: the background thread moves work off the
forward's path, it does not remove it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--count", type=int, default=16, help="calibration scenes")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RECIPE_NO_PROGRESS", "1")
    from pytorch_quantization.calib import HistogramCalibrator

    from recipe_engine import data as data_mod
    from recipe_engine.backends.pytorch_quantization.calibrators import FastHistogramCalibrator
    from recipe_engine.calib.collect import collect_statistics
    from recipe_engine.calib.loop import finish_calibration
    from recipe_engine.pipeline import apply
    from recipe_engine.quant import backend
    from recipe_engine.quant.apply import get_state
    from recipe_engine.recipe.loader import load_recipe

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
    ours = FastHistogramCalibrator.collect

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
        FastHistogramCalibrator.collect = {"upstream": HistogramCalibrator.collect,
                                           "off": lambda self, x: None}.get(mode, ours)
        os.environ["RECIPE_CALIB_ASYNC"] = "0" if mode == "inline" else "1"
        try:
            collect_statistics(model, state, batches, forward, count, False)
        finally:
            FastHistogramCalibrator.collect = ours

    def amax_of(mode: str) -> dict[str, torch.Tensor]:
        collect(mode)
        finish_calibration(state, loaded.spec.calibration)
        return {names[0]: backend.get_amax(q).clone() for names, q in state.unique()}

    modes = {"FP32 forward (no quantizers)": fp32_forward,
             "collection, pytorch-quantization collect (before)": lambda: collect("upstream"),
             "collection, engine, inline (RECIPE_CALIB_ASYNC=0)": lambda: collect("inline"),
             "collection, engine, background thread (default)": lambda: collect("async"),
             "collection with histograms off (the rest)": lambda: collect("off")}
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
    tick = time.perf_counter()
    finish_calibration(state, loaded.spec.calibration)
    amax_seconds = time.perf_counter() - tick

    voxels = sum(len(b["voxel_features"]) for b in batches) // len(batches)
    load = os.getloadavg()[0]
    print(f"zoo CenterPoint, {len(batches)} batches of ~{voxels} voxels, torch {torch.__version__}, {args.threads} "
          f"thread(s), {os.cpu_count()} CPUs, load average {load:.1f} at the end; fastest of {args.repeats}\n")
    print("| what | wall s | / FP32 | CPU s | / FP32 |")
    print("|---|---:|---:|---:|---:|")
    base_w, base_c = min(wall["FP32 forward (no quantizers)"]), min(cpu["FP32 forward (no quantizers)"])
    for name in modes:
        w, c = min(wall[name]), min(cpu[name])
        print(f"| {name} | {w:.3f} | {w / base_w:.2f}x | {c:.3f} | {c / base_c:.2f}x |")
    method = loaded.spec.calibration.method
    print(f"| amax, all {len(before)} quantizers ({method}) | {amax_seconds:.3f} | | | |")
    print(f"\namax identical, upstream collection vs the engine's: {len(before) - len(differ)} / {len(before)}")
    if differ:
        raise SystemExit(f"amax differs for {differ[:5]}")


if __name__ == "__main__":
    main()
