"""onnxruntime's ``quantize_static`` on PointPillars' dense parts vs FP32, the peer rows for issue 15.

    .venv/bin/python benchmarks/pointpillars_peers.py

The zoo PointPillars model runs with its two dense parts replaced by onnxruntime sessions: the pillar
feature net (``pillar_net.pfn``: Linear+BN+ReLU on the decorated points) and the BEV network (``bev``),
each exported to FP32 ONNX and quantized with ``quantize_static`` (QDQ, symmetric S8 activations as
TensorRT needs, per-channel S8 weights; MinMax, Entropy, Percentile) on the inputs those parts receive
from the recipe's own calibration batches (``recipes/pointpillars_int8.yaml``: 8 batches, 32 scenes).
mAP on the held-out test split and the validation split (48 scenes each), one thread. The engine's own
rows come from ``recipe run`` of ``pointpillars_int8.yaml`` / ``pointpillars_int8_mixed.yaml`` (README).
ORT's histogram calibrators need equal shapes across batches, so the PFN's calibration points (rows are
independent points) are fed in equal chunks of 16384; the statistics cover the same data.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import accuracy as bench  # noqa: E402  (the shared ONNX/ORT helpers of benchmarks/accuracy.py)

from recipe_engine import data as data_mod  # noqa: E402
from recipe_engine.recipe import load_recipe  # noqa: E402
from recipe_engine.zoo import pointpillars  # noqa: E402

CHUNK = 16384


def main() -> None:
    torch.set_num_threads(1)
    loaded = load_recipe(bench.RECIPES / "pointpillars_int8.yaml", ["export=[]"])
    forward = data_mod.forward_fn(loaded)
    model = pointpillars.build(pretrained=True).eval()
    calib = bench.first(data_mod.make_data(loaded, "calibration"), loaded.spec.calibration.batches)
    splits = {"test": list(data_mod.make_data(loaded, "test")),
              "validation": list(data_mod.make_data(loaded, "validation"))}

    def inputs_of(module: torch.nn.Module) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
        with torch.no_grad():
            for batch in calib:
                forward(model, batch)
        handle.remove()
        return seen

    points = torch.cat(inputs_of(model.pillar_net.pfn))
    parts = {"pfn": ("points", [points[i:i + CHUNK] for i in range(0, len(points) - CHUNK + 1, CHUNK)]),
             "bev": ("bev", inputs_of(model.bev))}
    fp32 = {name: bench.fp32_onnx(model.pillar_net.pfn if name == "pfn" else model.bev, calib_in[0], input_name)
            for name, (input_name, calib_in) in parts.items()}

    def evaluate(sessions: dict[str, bytes] | None) -> dict[str, float]:
        m = copy.deepcopy(model)
        if sessions is not None:
            m.pillar_net.pfn = bench.OrtModule(sessions["pfn"], 1)
            m.bev = bench.OrtModule(sessions["bev"], 1)
        return {split: pointpillars.evaluate(m, batches)["mAP"] for split, batches in splits.items()}

    reference = evaluate(None)
    rows = [["FP32 PyTorch", *(bench.fmt(reference[s]) for s in splits), "-", "-", "-"]]
    ort_fp32 = evaluate(fp32)
    rows.append(["FP32 onnxruntime", *(bench.fmt(ort_fp32[s]) for s in splits), "-", "-", "-"])
    for method in ("MinMax", "Entropy", "Percentile"):
        quantized, seconds = {}, 0.0
        for name, (input_name, calib_in) in parts.items():
            part = bench.DensePart(name, None, input_name, calib_in, None, None)
            quantized[name], took = bench.ort_quantize(fp32[name], part, method)
            seconds += took
        got = evaluate(quantized)
        rows.append([f"quantize_static {method}", *(bench.fmt(got[s]) for s in splits),
                     bench.fmt(reference["test"] - got["test"]), bench.fmt(reference["validation"] - got["validation"]),
                     f"{seconds:.1f}"])
    print(bench.table(["method", "mAP test", "mAP validation", "drop test", "drop validation", "quantize s"], rows,
                      right=(1, 2, 3, 4, 5)))


if __name__ == "__main__":
    main()
