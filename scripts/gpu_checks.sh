#!/usr/bin/env bash
# GPU checks that the CPU test suite cannot run, in one go, on a machine with an NVIDIA GPU:
#   1. TensorRT: build engines from the digits and CenterPoint `bev` onnx-qdq exports (INT8 + FP16)
#      and compare them with onnxruntime (`recipe run` with the tensorrt entries required);
#   2. spconv-cu12x: run the CenterPoint `scn.onnx` with the reference executor on CUDA and compare it
#      with the CPU executor and with the quantized PyTorch encoder.
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

# 2. spconv CUDA kernels: reference executor on GPU vs CPU vs PyTorch
OUT="$OUT" "$PY" - <<'EOF'
import json, os, sys
import torch
from recipe_engine import load_quantized
from recipe_engine.export.scn_reference import run_scn
from recipe_engine.export.verify import compare
from recipe_engine.zoo import centerpoint

out = os.environ["OUT"] + "/centerpoint"
model = load_quantized(f"{out}/model.pt", model=centerpoint.build(pretrained=True)).eval()
batch = next(iter(centerpoint.val_data(count=2, batch_size=2)))
grid = model.encoder.sparse_shape
args = (batch["voxel_features"], batch["coors"], grid, int(batch["batch_size"]))
with torch.no_grad():
    reference = model.encoder(batch["voxel_features"], batch["coors"], int(batch["batch_size"]))
(cpu,) = run_scn(f"{out}/scn.onnx", *args, device="cpu")
(gpu,) = run_scn(f"{out}/scn.onnx", *args, device="cuda")
figures = {"gpu_vs_cpu": compare(gpu.cpu(), cpu), "gpu_vs_pytorch": compare(gpu.cpu(), reference)}
print(json.dumps(figures, indent=2))
for entry in json.load(open(f"{out}/metrics.json"))["exports"]:
    print(entry["path"], entry["status"], "max_abs_diff", entry.get("max_abs_diff"), entry.get("trtexec", ""))
sys.exit(0 if figures["gpu_vs_pytorch"]["rel_error"] <= 0.05 else 1)
EOF
echo "GPU checks passed: $OUT"
