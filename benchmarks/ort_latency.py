"""onnxruntime CPU: latency and accuracy of the engine's INT8 exports vs FP32 and vs ``quantize_static``.

For the digits network (whole model) and CenterPoint's dense ``bev`` part, one run measures, side by
side on the same input and thread count:

- **FP32 ONNX** (TorchScript exporter, the FP32 model);
- **engine, target tensorrt**: the recipe's PTQ written by ``onnx-qdq`` as for TensorRT (Q/DQ on layer
  inputs and weights), run by onnxruntime;
- **engine, target onnxruntime**: the same calibrated model written with ``target: onnxruntime``
  (``recipe_engine/export/onnx_ort.py``: uint8 activations, int8 weights, int32 biases, one Q per tensor);
- **onnxruntime quantize_static** of the FP32 ONNX (QDQ, per-channel S8 weights, U8 asymmetric
  activations: its CPU default) with MinMax, Entropy and Percentile calibration, on the *same*
  calibration inputs the recipe calibrated on.

Latency: fastest and median of ``--runs`` runs, round-robin over the variants of a model (one run each per round, after
5 warm-up rounds, so that load from other processes falls on all alike), ``ORT_ENABLE_ALL``, ``--threads`` intra-op
threads (default 1: the machine is shared; ratios are what this measures), inter-op 1. Accuracy: digits
top-1 on its validation split; CenterPoint mAP of the ``bev`` part on the validation scenes' BEV tensors
from the FP32 sparse encoder (cached), so every row of a part sees the same inputs (the engine calibrates
with statistics collection on, where every quantizer passes its input through: its ``bev`` quantizers also
saw FP32 encoder outputs). SQNR: of each file's output vs the FP32 ONNX on the latency input.

    .venv/bin/python benchmarks/ort_latency.py [--runs 200] [--threads 1] [--models digits centerpoint]
        [--methods MinMax Entropy Percentile]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: name: (recipe, exported module, input name)
MODELS = {"digits": ("digits_int8", "", "x"), "centerpoint": ("centerpoint_int8", "bev", "bev_features")}


def _session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def latencies_ms(models: list[bytes], feeds: dict[str, np.ndarray], runs: int, threads: int) -> list[tuple[float, float]]:
    """(fastest, median) wall time of one run of each model (ms), measured round-robin (one run of each model
    per round, after 5 warm-up rounds) so that load from other processes falls on every model alike."""
    sessions = [_session(m, threads) for m in models]
    for _ in range(5):
        for session in sessions:
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for session, record in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, feeds)
            record.append((time.perf_counter() - start) * 1000)
    return [(min(t), statistics.median(t)) for t in times]


def sqnr_db(actual: np.ndarray, reference: np.ndarray) -> float:
    noise = float(np.sum((actual.astype(np.float64) - reference) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)


def _part(name: str):
    """(FP32 module, engine PTQ module, calibration inputs, evaluate(module) -> metric, metric name)."""
    import accuracy as acc

    from recipe_engine import data as data_mod
    from recipe_engine.pipeline import prepare
    from recipe_engine.recipe.loader import load_recipe
    from recipe_engine.zoo import digits

    recipe, module_path, _ = MODELS[name]
    loaded = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", overrides=["export=[]"])
    batches = acc.first(data_mod.make_data(loaded, "calibration"), loaded.spec.calibration.batches)
    forward = data_mod.forward_fn(loaded)
    fp32 = data_mod.build_model(loaded).eval()
    int8 = data_mod.build_model(loaded).eval()
    with acc.quiet():
        prepare(int8, loaded, batches, forward)
    method = loaded.spec.calibration.method
    if name == "digits":
        val = data_mod.make_data(loaded, "validation")
        return (fp32, int8, [b["image"] for b in batches], lambda m: digits.evaluate(m, val)["top1"], "top-1",
                f"{len(batches)} batches, {method}")
    calib = acc.capture_bev_inputs(fp32, batches, forward)
    val_batches = list(data_mod.make_data(loaded, "validation"))
    cached = [{"bev_features": f, "gt_cls": b["gt_cls"], "gt_center": b["gt_center"]}
              for f, b in zip(acc.capture_bev_inputs(fp32, val_batches, forward), val_batches, strict=True)]
    return (getattr(fp32, module_path), getattr(int8, module_path), calib, acc.detector_evaluator(cached), "mAP",
            f"{len(batches)} batches, {method}")


def measure(name: str, runs: int, threads: int, methods: list[str]) -> list[dict]:
    import accuracy as acc
    import onnx

    from recipe_engine.export.onnx_ort import place_for_onnxruntime
    from recipe_engine.export.onnx_qdq import export_qdq
    from recipe_engine.zoo.checkpoint import checkpoint_path

    if not checkpoint_path(name).is_file():
        print(f"(skipping {name}: no checkpoint)", file=sys.stderr)
        return []
    input_name = MODELS[name][2]
    acc.log(f"{name}: calibrating the recipe and capturing inputs")
    fp32, int8, calib, evaluate, metric, how = _part(name)
    example = calib[0]
    feeds = {input_name: example.numpy()}
    fp32_bytes = acc.fp32_onnx(fp32, example, input_name)
    with acc.quiet():
        qdq = export_qdq(int8, (example,), {}, dynamic_axes={input_name: {0: "batch"}, "output": {0: "batch"}}).model
    placed = copy.deepcopy(qdq)
    place_for_onnxruntime(placed)
    variants = [("FP32 ONNX", "-", fp32_bytes), ("engine onnx-qdq, target tensorrt", f"recipe ({how})",
                                                 qdq.SerializeToString()),
                ("engine onnx-qdq, target onnxruntime", f"recipe ({how})", placed.SerializeToString())]
    part = acc.DensePart(name, fp32, input_name, calib, None, evaluate)
    for method in methods:
        acc.log(f"{name}: quantize_static {method}")
        model_bytes, _ = acc.ort_quantize(fp32_bytes, part, method, symmetric=False)
        variants.append((f"ORT quantize_static {method} (U8 asym. act., S8 per-channel w)",
                         f"{acc.ORT_CALIBRATION[method]}, same inputs", model_bytes))
    reference = _session(fp32_bytes, threads).run(None, feeds)[0]
    acc.log(f"{name}: latency, {runs} rounds")
    times = latencies_ms([v[2] for v in variants], feeds, runs, threads)
    rows = []
    for (label, calibration, model_bytes), ms in zip(variants, times, strict=True):
        acc.log(f"{name}: {label}")
        output = _session(model_bytes, threads).run(None, feeds)[0]
        rows.append({"model": name, "variant": label, "calibration": calibration, "ms": ms[0], "median": ms[1],
                     "metric": evaluate(acc.OrtModule(model_bytes, threads)), "metric_name": metric,
                     "sqnr": sqnr_db(output, reference), "input": "x".join(map(str, example.shape)),
                     "nodes": len(onnx.load_from_string(model_bytes).graph.node)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="*", default=["MinMax", "Entropy", "Percentile"],
                        choices=["MinMax", "Entropy", "Percentile"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for m in args.models for r in measure(m, args.runs, args.threads, args.methods)]
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__} CPU EP, ORT_ENABLE_ALL, {args.threads} intra-op thread(s), median "
          f"of {args.runs} runs, {platform.processor() or platform.machine()}; all rows of a model measured in this "
          "run\n")
    print("| model | input | variant | calibration | fastest ms | FP32 / this (fastest) | median ms | FP32 / this "
          "(median) | metric | SQNR vs FP32 dB |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next(x for x in rows if x["model"] == r["model"] and x["variant"] == "FP32 ONNX")
        sqnr = "-" if r is base else f"{r['sqnr']:.1f}"
        print(f"| {r['model']} | {r['input']} | {r['variant']} | {r['calibration']} | {r['ms']:.2f} | "
              f"{base['ms'] / r['ms']:.2f}x | {r['median']:.2f} | {base['median'] / r['median']:.2f}x | "
              f"{r['metric_name']} {r['metric']:.2f} | {sqnr} |")


if __name__ == "__main__":
    main()
