"""GPU figures (issue #16, item 5): the real-scale CenterPoint on CUDA, and TensorRT INT8 vs FP16 latency.

One run on a machine with an NVIDIA GPU, spconv-cu12x and TensorRT (``scripts/gpu_checks.sh`` runs it
last). Two tables, absolute times (GPU):

1. **spconv + fake-quant on CUDA**, ``benchmarks/real_scale.py``'s nuScenes-sized CenterPoint (90k voxels
   per frame, random weights, BN statistics from one training-mode forward), batch 1 and 4: FP32 forward,
   op-site discovery + quantizer insertion (``apply``), statistics collection, amax, fake-quant forward.
   Every stage is timed between ``torch.cuda.synchronize()`` calls, median of ``--repeats`` (apply and amax:
   once, they change the model), with ``torch.cuda.max_memory_allocated`` above the stage start.
2. **TensorRT INT8 vs FP16** on the dense part (``bev``: SECOND + FPN + head on the 180 x 180 BEV map,
   ``[B, 256, 180, 180]``) of the model calibrated in table 1: the engine's ``onnx-qdq`` export against the
   same part exported without quantizers. TensorRT 11 (strongly typed): both graphs converted to FP16
   (``export.fp16.convert_to_fp16``: Q/DQ kept FP32 behind casts), no builder flags; TensorRT 10: the FP32
   files, INT8 + FP16 flags for the Q/DQ graph and FP16 alone for the plain one. Timing as ``trtexec``
   does by default: 200 ms warm-up, then at least ``--iterations`` enqueues and 3 s, each bracketed by CUDA
   events on one stream (GPU compute time: median and mean), plus back-to-back throughput. The
   equivalent ``trtexec`` lines are printed.

``--device cpu`` runs table 1 on the CPU and skips table 2: a dry run of everything but TensorRT (the CI
machine has no GPU; this is how the script is checked there).

    python benchmarks/gpu_speed.py [--device cuda] [--batches 1 4] [--voxels 90000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Stages:
    """Times stages between synchronisations and records peak device memory above each stage's start."""

    def __init__(self, device: str, batch: int) -> None:
        self.device, self.batch, self.rows = device, batch, []

    def run(self, name: str, fn, repeats: int = 1, note: str = ""):
        times, peak, result = [], 0.0, None
        for _ in range(repeats):
            _sync(self.device)
            start = 0
            if self.device == "cuda":
                start = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            tick = time.perf_counter()
            result = fn()
            _sync(self.device)
            times.append(time.perf_counter() - tick)
            if self.device == "cuda":
                peak = max(peak, (torch.cuda.max_memory_allocated() - start) / 2**20)
        self.rows.append({"batch": self.batch, "stage": name, "ms": statistics.median(times) * 1000,
                          "peak_mib": peak if self.device == "cuda" else float("nan"), "note": note})
        print(f"[b{self.batch}] {name}: {statistics.median(times) * 1000:.1f} ms", file=sys.stderr)
        return result


def sparse_table(device: str, batch_size: int, voxels: int, calib: int, repeats: int):
    """Table 1 rows for one batch size, and the calibrated model (for table 2)."""
    import real_scale

    from recipe_engine.calib.collect import collect_statistics
    from recipe_engine.calib.loop import finish_calibration
    from recipe_engine.pipeline import apply
    from recipe_engine.quant.apply import disable_matching, get_state
    from recipe_engine.recipe.loader import load_recipe

    batches = [_to(real_scale.make_batch(batch_size, seed, voxels), device) for seed in range(calib)]
    torch.manual_seed(0)
    fp32 = real_scale.build().to(device)
    real_scale.bn_warmup(fp32, batches[0])
    model = real_scale.build()
    model.load_state_dict(fp32.state_dict())
    model.to(device)
    forward = real_scale.forward_batch
    stages = Stages(device, batch_size)

    def run_all(m: nn.Module) -> None:
        with torch.no_grad():
            for b in batches:
                forward(m, b)

    run_all(fp32)  # warm-up: cuDNN/spconv tuning, allocator
    voxel_note = f"{calib} batches of {sum(len(b['voxel_features']) for b in batches) // calib} voxels"
    stages.run("FP32 forward", lambda: run_all(fp32), repeats, voxel_note)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "recipe.yaml")
        path.write_text(real_scale.RECIPE.format(root=ROOT, batches=calib, export=""))
        loaded = load_recipe(path)
    stages.run("apply (op-site discovery forward + quantizers)", lambda: apply(model, loaded, batches[:1], forward))
    state = get_state(model)
    collect = lambda: collect_statistics(model, state, batches, forward, calib, False)  # noqa: E731
    collect()  # warm-up (first calls of the quantizers' CUDA kernels)
    stages.run("statistics collection", collect, repeats, voxel_note)
    stages.run("amax (all quantizers)", lambda: finish_calibration(state, loaded.spec.calibration), 1,
               f"{loaded.spec.calibration.method}, {len(list(state.unique()))} quantizers")
    disable_matching(state, loaded.spec.disable)
    run_all(model)
    stages.run("fake-quant forward", lambda: run_all(model), repeats, voxel_note)
    base = next(r["ms"] for r in stages.rows if r["stage"] == "FP32 forward")
    for row in stages.rows:
        row["ratio"] = row["ms"] / base if row["stage"] in ("statistics collection", "fake-quant forward") else None
    return stages.rows, fp32, model, batches


# ----------------------------------------------------------------------------- TensorRT
def bev_onnx(fp32: nn.Module, model: nn.Module, batch: dict, fp16: bool) -> tuple[bytes, bytes, torch.Tensor]:
    """(plain ONNX, Q/DQ ONNX, BEV input) of the ``bev`` part, exported on the CPU."""
    import copy

    from recipe_engine.export.fp16 import convert_to_fp16
    from recipe_engine.export.onnx_qdq import export_qdq

    seen: list[torch.Tensor] = []
    handle = fp32.bev.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        fp32(batch["voxel_features"], batch["coors"], int(batch["batch_size"]))
    handle.remove()
    x = seen[0].cpu()
    plain = copy.deepcopy(fp32.bev).cpu().eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(plain, (x,), buffer, dynamo=False, opset_version=17, input_names=["bev_features"],
                          output_names=["output"], do_constant_folding=True)
    import onnx

    plain_model = onnx.load_from_string(buffer.getvalue())
    if fp16:
        plain_model = convert_to_fp16(plain_model)
    quantized = copy.deepcopy(model.bev).cpu().eval()
    qdq = export_qdq(quantized, (x,), {}, fp16=fp16).model
    return plain_model.SerializeToString(), qdq.SerializeToString(), x


def time_engine(engine_bytes: bytes, x: np.ndarray, iterations: int, duration_s: float = 3.0) -> dict:
    """trtexec-style timing: 200 ms warm-up, then >= ``iterations`` enqueues and >= ``duration_s``."""
    from recipe_engine.export.tensorrt import bind

    bound = bind(engine_bytes, {"bev_features": x})
    context = bound.context
    stream = torch.cuda.Stream()
    handle = stream.cuda_stream
    warm = time.perf_counter()
    while time.perf_counter() - warm < 0.2:
        context.execute_async_v3(handle)
        stream.synchronize()
    events = []
    start = time.perf_counter()
    while len(events) < iterations or time.perf_counter() - start < duration_s:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        context.execute_async_v3(handle)
        end.record(stream)
        events.append((begin, end))
        if len(events) % 50 == 0:
            stream.synchronize()
    stream.synchronize()
    gpu = [b.elapsed_time(e) for b, e in events]
    burst = 200
    tick = time.perf_counter()
    for _ in range(burst):
        context.execute_async_v3(handle)
    stream.synchronize()
    return {"median_ms": statistics.median(gpu), "mean_ms": statistics.fmean(gpu),
            "throughput_qps": burst / (time.perf_counter() - tick), "iterations": len(gpu)}


def tensorrt_table(fp32: nn.Module, model: nn.Module, batch: dict, batch_size: int, iterations: int) -> list[dict]:
    import tensorrt as trt

    from recipe_engine.export.tensorrt import build_engine, strongly_typed, trtexec_command

    typed = strongly_typed(trt.__version__)
    plain, qdq, x = bev_onnx(fp32, model, batch, fp16=typed)
    feed = x.numpy().astype(np.float16 if typed else np.float32)
    rows = []
    for label, onnx_bytes, int8 in (("FP16", plain, False), ("INT8 (engine onnx-qdq)", qdq, True)):
        figures = time_engine(build_engine(onnx_bytes, 4.0, {}, False, int8=int8), feed, iterations)
        rows.append({"batch": batch_size, "precision": label, "input": "x".join(map(str, x.shape)), **figures})
        print(f"[b{batch_size}] TensorRT {label}: median {figures['median_ms']:.3f} ms", file=sys.stderr)
    rows[1]["speedup"] = rows[0]["median_ms"] / rows[1]["median_ms"]
    print("  trtexec equivalent (INT8):", trtexec_command("bev.onnx", "bev.engine", 4.0, {}, False, trt.__version__),
          file=sys.stderr)
    return rows


def dry_run_exports(fp32: nn.Module, model: nn.Module, batch: dict) -> None:
    import onnxruntime as ort

    for fp16 in (False, True):
        plain, qdq, x = bev_onnx(fp32, model, batch, fp16=fp16)
        feed = x.numpy().astype(np.float16 if fp16 else np.float32)
        outs = [ort.InferenceSession(b, providers=["CPUExecutionProvider"]).run(None, {"bev_features": feed})[0]
                for b in (plain, qdq)]
        ref = outs[0].astype(np.float64)
        sqnr = 10 * np.log10(np.sum(ref ** 2) / max(np.sum((outs[1].astype(np.float64) - ref) ** 2), 1e-30))
        print(f"dry run: bev graphs for TensorRT {'11 (FP16)' if fp16 else '10 (FP32)'}: input "
              f"{'x'.join(map(str, x.shape))}, Q/DQ vs plain in onnxruntime SQNR {sqnr:.1f} dB", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--voxels", type=int, default=90000)
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("RECIPE_NO_PROGRESS", "1")
    import recipe_engine  # noqa: F401  (spconv CPU fixes, when the dry run is on the CPU)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (torch.cuda.is_available() is False); use --device cpu for a dry run")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    import spconv

    sparse_rows, trt_rows = [], []
    for batch_size in args.batches:
        rows, fp32, model, batches = sparse_table(args.device, batch_size, args.voxels, args.calib_batches,
                                                  args.repeats)
        sparse_rows += rows
        if args.device == "cuda":
            trt_rows += tensorrt_table(fp32, model, batches[0], batch_size, args.iterations)
        else:  # the dry run: both graphs table 2 would build, checked by onnx and run by onnxruntime
            dry_run_exports(fp32, model, batches[0])
        del fp32, model, batches
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{where}, torch {torch.__version__}, spconv {spconv.__version__}, {args.voxels} voxels per frame\n")
    print("| batch | stage | ms | / FP32 | peak MiB above stage start | note |")
    print("|---:|---|---:|---:|---:|---|")
    for r in sparse_rows:
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        print(f"| {r['batch']} | {r['stage']} | {r['ms']:.1f} | {ratio} | {r['peak_mib']:.0f} | {r['note']} |")
    if trt_rows:
        import tensorrt as trt

        print(f"\nTensorRT {trt.__version__}, bev part (GPU compute time per inference)\n")
        print("| batch | precision | input | median ms | mean ms | throughput /s | INT8 speed-up |")
        print("|---:|---|---|---:|---:|---:|---:|")
        for r in trt_rows:
            speedup = f"{r['speedup']:.2f}x" if "speedup" in r else ""
            print(f"| {r['batch']} | {r['precision']} | {r['input']} | {r['median_ms']:.3f} | {r['mean_ms']:.3f} | "
                  f"{r['throughput_qps']:.1f} | {speedup} |")


if __name__ == "__main__":
    main()
