#!/usr/bin/env bash
# GPU checks that the CPU test suite cannot run, in one go, on a machine with an NVIDIA GPU. Exits 1 when
# one does not hold.
#   1. TensorRT (dense artifacts): build engines from the digits and CenterPoint `bev` onnx-qdq exports
#      (`recipe run` with the tensorrt entries required: an engine that loses more than the margin of SQNR
#      vs FP32 relative to PyTorch fake-quant, or has a systematic error, fails the run), then assert
#      from metrics.json that every artifact is `ok` and that TensorRT (GPU) and onnxruntime (CPU) agree
#      on the signal (SQNR vs FP32 within the margin of each other);
#   2. sparse artifact: run the CenterPoint `scn.onnx` with the sparse reference runtime on CUDA and on
#      CPU, and assert that both are faithful to the quantized PyTorch encoder (same signal checks) and
#      that GPU and CPU agree (SQNR of GPU vs CPU >= 40 dB);
#   3. GPU figures (benchmarks/gpu_speed.py, issue #16): the nuScenes-sized CenterPoint on CUDA (FP32 forward,
#      statistics collection, amax, fake-quant forward, batch 1 and 4) and TensorRT INT8 vs FP16 latency of its
#      BEV part; tables printed, written to $OUT/gpu_speed.md. Skip with SKIP_SPEED=1.
# Usage: scripts/gpu_checks.sh            (from anywhere inside the repo)
# Env:   CUDA_EXTRA=cu124|cu121|cu118 (spconv wheel, default cu124), PYTHON=python3, VENV=.venv-gpu,
#        OUT=runs/gpu, SKIP_INSTALL=1 to reuse an existing venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
CUDA_EXTRA=${CUDA_EXTRA:-cu124}
OUT=${OUT:-runs/gpu}
PY="$VENV/bin/python"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet "torch==2.13.0"            # the PyPI wheel is the CUDA build
  "$PY" -m pip install --quiet -e ".[$CUDA_EXTRA,tensorrt,dev]"
fi
"$PY" - <<'EOF'
import tensorrt, torch, spconv
assert torch.cuda.is_available(), "torch has no CUDA"
print(f"torch {torch.__version__} ({torch.cuda.get_device_name()}), tensorrt {tensorrt.__version__}, spconv {spconv.__version__}")
EOF

mkdir -p "$OUT"
# 1. TensorRT engines (required: a failed build or a TRT/ORT mismatch fails the run)
"$VENV/bin/recipe" run recipes/digits_int8.yaml --out "$OUT/digits" \
  --set 'export=[{format: onnx-qdq, path: digits.onnx, dynamic_axes: {x: {0: batch}, output: {0: batch}}},
                 {format: tensorrt, source: digits.onnx, path: digits.engine, required: true}]'
"$VENV/bin/recipe" run recipes/centerpoint_int8.yaml --out "$OUT/centerpoint" \
  --set 'export=[{format: onnx-sparse, module: encoder, path: scn.onnx},
                 {format: onnx-qdq, module: bev, path: bev.onnx},
                 {format: tensorrt, source: bev.onnx, path: bev.engine, required: true}]'

# 1b. TensorRT (GPU) vs onnxruntime (CPU) on the dense artifacts, from metrics.json
OUT="$OUT" "$PY" - <<'EOF'
import json, os, sys
failed = []
for run in ("digits", "centerpoint"):
    exports = json.load(open(f"{os.environ['OUT']}/{run}/metrics.json"))["exports"]
    by_path = {e["path"]: e for e in exports}
    for entry in exports:
        print(run, entry["path"], entry["status"], "SQNR vs FP32 pytorch/runtime:", entry.get("sqnr_pytorch_db"),
              entry.get("sqnr_runtime_db"), "systematic dB:", entry.get("systematic_db"), entry.get("tensorrt", ""))
        if entry["status"] != "ok":
            failed.append(f"{run}/{entry['path']}: {entry['status']} {entry.get('reason', '')}")
        elif entry["format"] == "tensorrt":
            source = by_path[entry["source"]]
            gap = abs(entry["sqnr_runtime_db"] - source["sqnr_runtime_db"])
            print(f"  TensorRT vs onnxruntime: SQNR gap {gap:.3f} dB, {entry['versus_onnxruntime']}")
            if not gap <= entry["margin_db"]:
                failed.append(f"{run}/{entry['path']}: TensorRT and onnxruntime differ by {gap:.3f} dB of SQNR")
    if not any(e["format"] == "tensorrt" for e in exports):
        failed.append(f"{run}: no tensorrt artifact")
print("\n".join(failed) or "dense artifacts: TensorRT (GPU) agrees with onnxruntime (CPU)")
sys.exit(1 if failed else 0)
EOF

# 2. sparse artifact: the reference runtime on GPU vs CPU vs PyTorch (fake-quant and FP32)
OUT="$OUT" "$PY" - <<'EOF'
import os, sys
import torch
from recipe_engine import load_quantized
from recipe_engine.export import runner
from recipe_engine.export.quantizers import quantizers_off
from recipe_engine.export.signal_check import problems, signal_figures, sqnr_db, summarize_signal
from recipe_engine.quant.apply import get_state
from recipe_engine.zoo import centerpoint

out = os.environ["OUT"] + "/centerpoint"
model = load_quantized(f"{out}/model.pt", model=centerpoint.build(pretrained=True)).eval()
batch = next(iter(centerpoint.val_data(count=2, batch_size=2)))
grid = model.encoder.sparse_shape
call = (batch["voxel_features"], batch["coors"], int(batch["batch_size"]))
with torch.no_grad():
    pytorch = model.encoder(*call)
    with quantizers_off(get_state(model)):
        fp32 = model.encoder(*call)
run = runner.run_sparse_runtime
(cpu,) = run(f"{out}/scn.onnx", call[0], call[1], grid, call[2], device="cpu")
(gpu,) = run(f"{out}/scn.onnx", call[0], call[1], grid, call[2], device="cuda")
failed = []
for name, produced in (("cpu", cpu), ("gpu", gpu)):
    figures = summarize_signal([signal_figures(produced.cpu(), pytorch, fp32)], ["output"], 0.5)
    print(name, {k: figures[k] for k in ("sqnr_pytorch_db", "sqnr_runtime_db", "systematic_db", "max_diff_steps")})
    failed += [f"{name}: {p}" for p in problems(figures, 0.5)]
agreement = sqnr_db(gpu.cpu().double().numpy(), cpu.double().numpy())
print(f"GPU vs CPU: SQNR {agreement:.2f} dB")
if not agreement >= 40.0:
    failed.append(f"the sparse runtime on GPU and CPU differ: SQNR {agreement:.2f} dB < 40 dB")
print("\n".join(failed) or "sparse artifact: GPU and CPU agree and are faithful")
sys.exit(1 if failed else 0)
EOF
if [[ "${SKIP_SPEED:-0}" != 1 ]]; then
  "$PY" benchmarks/gpu_speed.py | tee "$OUT/gpu_speed.md"
fi
echo "GPU checks passed: $OUT"
