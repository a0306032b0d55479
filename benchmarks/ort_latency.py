"""onnxruntime CPU: latency and accuracy of the engine's INT8 exports vs FP32 and vs ``quantize_static``.

For each dense part the zoo has (the digits network whole; CenterPoint's ``bev``; PointPillars' ``bev``
and ``pillar_net.pfn``; BEVFusion's ``camera`` and ``bev``), one run measures, side by side on the same
input and thread count:

- **FP32 ONNX** (TorchScript exporter, the FP32 module);
- **engine, target tensorrt**: the recipe's PTQ written by ``onnx-qdq`` as for TensorRT (Q/DQ on layer
  inputs and weights), run by onnxruntime;
- **engine, target onnxruntime**: the same calibrated model written with ``target: onnxruntime``
  (``recipe_engine/export/onnx_ort.py``: uint8 activations, int8 weights, int32 biases, one Q per tensor;
  thin layers float or with padded channels, ``ort_thin.py``); the same with ``placement="integer"`` (every
  quantized layer an integer kernel: the placement before ``ort_thin``); and, where the output is written
  by a conv (a float conv in the default placement: no range), with ``output_ranges`` from the fake-quant
  part's output min/max on the calibration inputs (that conv then a ``QLinearConv``, as in
  ``quantize_static``'s files);
- **onnxruntime quantize_static** of the FP32 ONNX (QDQ, per-channel S8 weights, U8 asymmetric
  activations: its CPU default) with MinMax, Entropy and Percentile calibration, on the *same*
  calibration inputs the recipe calibrated on (the part's inputs in the FP32 model on the recipe's
  calibration batches, captured with a forward pre-hook; the PFN's points in equal chunks of 16384 rows,
  since ORT's histogram calibrators need equal shapes).

Latency: fastest and median of ``--runs`` runs per thread count (``--threads``, default 1 and 2),
round-robin over the variants of a part (one run each per round, after 5 warm-up rounds, so that load from
other processes falls on all alike), ``ORT_ENABLE_ALL``, inter-op 1. Accuracy: the FP32 PyTorch model with
only this part replaced by the variant's onnxruntime session (1 thread), on the recipe's ``test`` split
(digits has none: its validation split, top-1). PointPillars' calibration is ``pointpillars_int8.yaml``'s;
its accuracy rows for the ``bev`` part are those of ``pointpillars_int8_mixed.yaml`` (which only disables the
PFN Linear's quantizers: the PFN stays FP32, the ``bev`` export is the same), the ``pfn`` rows show the INT8
PFN Linear's loss. SQNR: of each file's output vs the FP32 ONNX on the latency input.

    .venv/bin/python benchmarks/ort_latency.py [--runs 200] [--threads 1 2] [--parts digits centerpoint.bev ...]
        [--methods MinMax Entropy Percentile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: part: (recipe calibrated, module path in the model ("" = whole model))
PARTS = {"digits": ("digits_int8", ""), "centerpoint.bev": ("centerpoint_int8", "bev"),
         "pointpillars.bev": ("pointpillars_int8", "bev"), "pointpillars.pfn": ("pointpillars_int8", "pillar_net.pfn"),
         "bevfusion.camera": ("bevfusion_int8", "camera"), "bevfusion.bev": ("bevfusion_int8", "bev")}
CHUNK = 16384


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


class OrtPart(nn.Module):
    """An onnxruntime session called like the module it replaces (positional tensor inputs, first output)."""

    def __init__(self, model_bytes: bytes, threads: int = 1) -> None:
        super().__init__()
        self.session = _session(model_bytes, threads)
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        feeds = {n: a.detach().contiguous().numpy() for n, a in zip(self.names, args, strict=True)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _replaced(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    if not path:
        return module
    out = copy.deepcopy(model)
    parent, _, leaf = path.rpartition(".")
    setattr(out.get_submodule(parent) if parent else out, leaf, module)
    return out


@dataclass
class Part:
    name: str
    fp32: nn.Module  # the part
    int8: nn.Module  # the engine's calibrated PTQ of the part (fake-quant)
    inputs: list[tuple[torch.Tensor, ...]]  # calibration inputs of the part
    input_names: list[str]
    evaluate: object  # (part module or replacement) -> metric
    metric: str
    how: str


_CALIBRATED: dict[str, tuple] = {}


def _calibrated(recipe: str):
    """(loaded recipe, FP32 model, engine PTQ model, calibration batches, forward), once per recipe."""
    if recipe not in _CALIBRATED:
        import accuracy as acc

        from recipe_engine import data as data_mod
        from recipe_engine.pipeline import prepare
        from recipe_engine.recipe.loader import load_recipe

        loaded = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", overrides=["export=[]"])
        batches = acc.first(data_mod.make_data(loaded, "calibration"), loaded.spec.calibration.batches)
        forward = data_mod.forward_fn(loaded)
        fp32, int8 = data_mod.build_model(loaded).eval(), data_mod.build_model(loaded).eval()
        acc.log(f"{recipe}: calibrating ({len(batches)} batches, {loaded.spec.calibration.method})")
        with acc.quiet():
            prepare(int8, loaded, batches, forward)
        _CALIBRATED[recipe] = (loaded, fp32, int8, batches, forward)
    return _CALIBRATED[recipe]


def make_part(name: str) -> Part:
    from recipe_engine import data as data_mod
    from recipe_engine.export.onnx_qdq import flatten_inputs

    recipe, path = PARTS[name]
    loaded, fp32, int8, batches, forward = _calibrated(recipe)
    module = _get(fp32, path)
    seen: list[tuple[torch.Tensor, ...]] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(tuple(a.detach().clone() for a in args)))
    with torch.no_grad():
        for batch in batches:
            forward(fp32, batch)
    handle.remove()
    if name.endswith(".pfn"):
        points = torch.cat([s[0] for s in seen])
        seen = [(points[i:i + CHUNK],) for i in range(0, len(points) - CHUNK + 1, CHUNK)]
    split = "test" if loaded.spec.data.test is not None else "validation"
    data = list(data_mod.make_data(loaded, split))
    evaluate_fn = data_mod.evaluate_fn(loaded)
    key = "top1" if name == "digits" else "mAP"

    def evaluate(replacement: nn.Module) -> float:
        with torch.no_grad():
            return float(evaluate_fn(_replaced(fp32, path, replacement), data)[key])

    names = flatten_inputs(module, seen[0], {}).names
    method = loaded.spec.calibration.method
    return Part(name, module, _get(int8, path), seen, names, evaluate, f"{'top-1' if key == 'top1' else 'mAP'} "
                f"({split})", f"{len(batches)} batches, {method}")


def fp32_onnx(part: Part) -> bytes:
    buffer = io.BytesIO()
    import accuracy as acc

    with acc.quiet(), torch.no_grad():
        torch.onnx.export(part.fp32.eval(), part.inputs[0], buffer, dynamo=False, opset_version=17,
                          input_names=part.input_names, output_names=["output"], do_constant_folding=True,
                          dynamic_axes={**{n: {0: "batch"} for n in part.input_names}, "output": {0: "batch"}})
    return buffer.getvalue()


def engine_qdq(part: Part):
    import accuracy as acc

    from recipe_engine.export.onnx_qdq import export_qdq, flatten_outputs

    with torch.no_grad():
        outputs, _ = flatten_outputs(part.int8(*part.inputs[0]))
    axes = {**{n: {0: "batch"} for n in part.input_names}, **{o: {0: "batch"} for o in outputs}}
    with acc.quiet():
        return export_qdq(part.int8, part.inputs[0], {}, dynamic_axes=axes).model


def quantize_static(fp32_bytes: bytes, part: Part, method: str) -> bytes:
    """ORT's ``quantize_static`` (QDQ, per-channel S8 weights, U8 asymmetric activations) on the part's inputs."""
    import accuracy as acc
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{n: t.numpy() for n, t in zip(part.input_names, args, strict=True)}
                               for args in part.inputs])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        raw, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        raw.write_bytes(fp32_bytes)
        with acc.quiet(), contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
            ort_quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, method),
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return out.read_bytes()


def measure(name: str, runs: int, threads: list[int], methods: list[str]) -> list[dict]:
    import accuracy as acc
    import onnx

    from recipe_engine.export import ort_thin
    from recipe_engine.export.onnx_ort import place_for_onnxruntime
    from recipe_engine.zoo.checkpoint import checkpoint_path

    if not checkpoint_path(PARTS[name][0].split("_")[0]).is_file():
        print(f"(skipping {name}: no checkpoint)", file=sys.stderr)
        return []
    acc.log(f"{name}: preparing")
    part = make_part(name)
    feeds = {n: t.numpy() for n, t in zip(part.input_names, part.inputs[0], strict=True)}
    fp32_bytes = fp32_onnx(part)
    qdq = engine_qdq(part)
    placed, integer = copy.deepcopy(qdq), copy.deepcopy(qdq)
    summary = place_for_onnxruntime(placed)
    place_for_onnxruntime(integer, placement="integer")
    for line in ort_thin.notes(summary):
        acc.log(f"{name}: {line}")
    variants = [("FP32 ONNX", "-", fp32_bytes),
                ("engine onnx-qdq, target tensorrt", f"recipe ({part.how})", qdq.SerializeToString()),
                ("engine onnx-qdq, target onnxruntime", f"recipe ({part.how})", placed.SerializeToString()),
                ("engine target onnxruntime, placement integer (every layer integer, the placement before)",
                 f"recipe ({part.how})", integer.SerializeToString())]
    with torch.no_grad():  # the fake-quant part's output range on the calibration inputs (min/max)
        outs = [part.int8(*args) for args in part.inputs]
    ranges = {name: (min(float(o.min()) for o in outs), max(float(o.max()) for o in outs))
              for name in [o.name for o in qdq.graph.output][:1]}
    ranged = copy.deepcopy(qdq)
    if place_for_onnxruntime(ranged, output_ranges=ranges).get("quantized_outputs"):
        variants.append(("engine target onnxruntime, output_ranges (calibrated min/max)", f"recipe ({part.how}), "
                         "output: min/max of the fake-quant part", ranged.SerializeToString()))
    for method in methods:
        acc.log(f"{name}: quantize_static {method}")
        variants.append((f"ORT quantize_static {method}", f"{acc.ORT_CALIBRATION[method]}, same inputs",
                         quantize_static(fp32_bytes, part, method)))
    reference = _session(fp32_bytes, 1).run(None, feeds)[0]
    times = {}
    for t in threads:
        acc.log(f"{name}: latency, {runs} rounds, {t} thread(s)")
        times[t] = latencies_ms([v[2] for v in variants], feeds, runs, t)
    rows = []
    for i, (label, calibration, model_bytes) in enumerate(variants):
        acc.log(f"{name}: accuracy, {label}")
        output = _session(model_bytes, 1).run(None, feeds)[0]
        rows.append({"part": name, "variant": label, "calibration": calibration,
                     "ms": {t: times[t][i] for t in threads}, "metric": part.evaluate(OrtPart(model_bytes)),
                     "metric_name": part.metric, "sqnr": sqnr_db(output, reference),
                     "input": ", ".join("x".join(map(str, a.shape)) for a in part.inputs[0]),
                     "nodes": len(onnx.load_from_string(model_bytes).graph.node)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--methods", nargs="*", default=["MinMax", "Entropy", "Percentile"],
                        choices=["MinMax", "Entropy", "Percentile"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [r for p in args.parts for r in measure(p, args.runs, args.threads, args.methods)]
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__} CPU EP, ORT_ENABLE_ALL, inter-op 1, {args.runs} rounds per thread "
          f"count, {platform.processor() or platform.machine()}; all rows of a part measured in this run; "
          "speed-up = FP32 ONNX time / this time\n")
    timing = " | ".join(f"{t}T fastest ms | {t}T speed-up | {t}T median ms | {t}T speed-up (median)"
                        for t in args.threads)
    print(f"| part | input | variant | calibration | {timing} | metric | SQNR vs FP32 dB |")
    print("|---|---|---|---|" + "---:|" * (4 * len(args.threads)) + "---:|---:|")
    for r in rows:
        base = next(x for x in rows if x["part"] == r["part"] and x["variant"] == "FP32 ONNX")
        sqnr = "-" if r is base else f"{r['sqnr']:.1f}"
        cells = " | ".join(f"{r['ms'][t][0]:.2f} | {base['ms'][t][0] / r['ms'][t][0]:.2f}x | {r['ms'][t][1]:.2f} | "
                           f"{base['ms'][t][1] / r['ms'][t][1]:.2f}x" for t in args.threads)
        print(f"| {r['part']} | {r['input']} | {r['variant']} | {r['calibration']} | {cells} | "
              f"{r['metric_name']} {r['metric']:.2f} | {sqnr} |")


if __name__ == "__main__":
    main()
