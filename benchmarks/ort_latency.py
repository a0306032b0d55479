"""onnxruntime CPU latency: INT8 Q/DQ export vs the FP32 ONNX of the same dense part.

For each zoo model whose checkpoint is available (digits: the whole network; CenterPoint: the
dense ``bev`` part) the FP32 model and the recipe's INT8 model are exported with the same
captured inputs; both run with onnxruntime's CPU execution provider at full graph optimisation
(which turns Q/DQ pairs into QLinearConv & co.). Prints a markdown table; the ratio is FP32 / INT8
latency (> 1: INT8 is faster). Gains depend on the CPU's int8 dot-product support (VNNI/AMX).

    .venv/bin/python benchmarks/ort_latency.py [--runs 50] [--threads 2] [--models digits centerpoint]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    # name: (recipe, exported module, recipe overrides that keep calibration short)
    "digits": ("digits_int8", "", ["calibration.batches=2"]),
    "centerpoint": ("centerpoint_int8", "bev", ["data.calibration.kwargs.count=4", "data.calibration.kwargs.batch_size=4",
                                                "calibration.batches=1", "calibration.method=max"]),
}


def _session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def latency_ms(model_bytes: bytes, feeds: dict[str, np.ndarray], runs: int, threads: int) -> float:
    """Median wall time of one run (after 5 warm-up runs), in milliseconds."""
    session = _session(model_bytes, threads)
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(name: str, runs: int, threads: int) -> dict | None:
    from recipe_engine import data as data_mod
    from recipe_engine.export.capture import capture, find_module
    from recipe_engine.export.onnx_qdq import export_qdq, flatten_inputs, flatten_outputs, torchscript_export
    from recipe_engine.pipeline import prepare
    from recipe_engine.recipe.loader import load_recipe
    from recipe_engine.zoo.checkpoint import checkpoint_path

    recipe, module_path, overrides = MODELS[name]
    if not checkpoint_path(name).is_file():
        print(f"(skipping {name}: no checkpoint)", file=sys.stderr)
        return None
    loaded = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", overrides=overrides + ["export=[]"])
    batches = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)

    fp32 = data_mod.build_model(loaded)
    call = capture(fp32, batches, forward, [module_path]).inputs[module_path]
    fp32_module = find_module(fp32, module_path)
    flat = flatten_inputs(fp32_module, call.args, call.kwargs)
    names, _ = flatten_outputs(fp32_module(*call.args, **call.kwargs))
    fp32_bytes = torchscript_export(fp32_module, flat, names, 17, None).SerializeToString()

    int8 = data_mod.build_model(loaded)
    prepare(int8, loaded, batches, forward)
    int8_bytes = export_qdq(find_module(int8, module_path), call.args, call.kwargs).model.SerializeToString()

    feeds = flat.feeds()
    shape = "x".join(str(d) for d in next(iter(feeds.values())).shape)
    a = latency_ms(fp32_bytes, feeds, runs, threads)
    b = latency_ms(int8_bytes, feeds, runs, threads)
    return {"model": f"{name} {module_path or '(whole)'}", "input": shape, "fp32": a, "int8": b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    rows = [r for r in (measure(m, args.runs, args.threads) for m in args.models) if r]
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__} CPU EP, {args.threads} threads, median of {args.runs} runs, "
          f"{platform.processor() or platform.machine()}\n")
    print("| model (part) | input | FP32 ONNX ms | INT8 Q/DQ ms | FP32 / INT8 |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['fp32']:.2f} | {r['int8']:.2f} | {r['fp32'] / r['int8']:.2f}x |")


if __name__ == "__main__":
    main()
