"""NVIDIA Model-Optimizer INT8 default on the whole PointPillars zoo model, in this interpreter.

What a user of ``nvidia-modelopt`` does with no tuning: ``mtq.quantize(model, INT8_DEFAULT_CFG,
forward_loop)`` on the FP32 model (``recipe_engine.zoo.pointpillars:build(pretrained=True)``), then
evaluate. modelopt's choices, all its defaults (modelopt 0.47):

* ``INT8_DEFAULT_CFG``: every ``*weight_quantizer`` 8 bit with one scale per index of ``axis: 0`` (the
  output channel of Linear/Conv2d; for the FPN ``ConvTranspose2d``, weight ``[in, out, kh, kw]``, the
  *input* channel: the config's axis is used as given, amax shape ``[in, 1, 1, 1]``), every
  ``*input_quantizer`` 8 bit per tensor, ``algorithm: max`` (amax = the largest magnitude seen in
  calibration, no histogram); quantizers of BatchNorm modules are off. 32 quantizers end up enabled
  (input + weight of 16 layers).
* modelopt replaces every registered module (here the PFN ``Linear``, the SECOND/head ``Conv2d`` and the
  FPN ``ConvTranspose2d``) with its quantized class; BatchNorm is **not** folded (the weights are
  quantized as trained, before BN) and the FPN concat has no quantizer of its own (the head conv's input
  quantizer sees the concatenated map).
* Nothing is kept in full precision: the PFN Linear, which reads the raw point decorations, is INT8 too.

Data are the recipe's: ``calibration_data(count=32, seed=seed)`` (4 scenes per batch, the first
``calib_batches`` batches, as ``recipes/pointpillars_int8.yaml`` with ``data.calibration.kwargs.seed``),
evaluated with ``pointpillars.evaluate`` on ``val_data()`` and ``test_data()`` (48 scenes each).
``seconds`` is the wall time of ``mtq.quantize`` (module replacement + calibration forward passes);
the calibration scenes are generated before the clock starts.

Measured (modelopt 0.47.0, CPU, 1 thread, calibration seeds 0 / 1 / 2): test mAP 73.62 / 73.52 / 73.57
(mean 73.57, range 0.10), val 74.60 / 74.38 / 74.56 (mean 74.51, range 0.23); ``mtq.quantize`` 0.6-0.9 s.
FP32 is 85.16 test / 84.70 val.

``benchmarks/accuracy.py`` calls :func:`run`; ``python benchmarks/accuracy_parts/modelopt_pointpillars.py``
prints the table over calibration seeds 0, 1, 2.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recipe_engine.zoo import pointpillars as zoo  # noqa: E402 - after the sys.path line for script use

CALIB_SCENES = 32  # recipes/pointpillars_int8.yaml: data.calibration.kwargs.count


def _modelopt():
    """``modelopt.torch.quantization`` (its CPU-only warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import modelopt.torch.quantization as mtq
    logging.getLogger("modelopt").setLevel(logging.ERROR)
    return mtq


def enabled_quantizers(model: torch.nn.Module) -> int:
    """Number of enabled modelopt TensorQuantizers."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return sum(1 for m in model.modules() if isinstance(m, TensorQuantizer) and m.is_enabled)


def quantize(seed: int, calib_batches: int = 8) -> tuple[torch.nn.Module, float]:
    """The modelopt INT8-default model calibrated on the recipe's batches, and the seconds it took."""
    mtq = _modelopt()
    batches = list(zoo.calibration_data(count=CALIB_SCENES, seed=seed))[:calib_batches]
    model = zoo.build(pretrained=True).eval()

    def forward_loop(m: torch.nn.Module) -> None:
        for batch in batches:
            zoo.forward_batch(m, batch)

    start = time.perf_counter()
    with torch.no_grad():
        model = mtq.quantize(model, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop=forward_loop)
    return model.eval(), time.perf_counter() - start


def run(seed: int, calib_batches: int = 8) -> dict:
    """{"test": mAP_test, "val": mAP_val, "seconds": quantize wall time, "quantizers": n enabled}."""
    model, seconds = quantize(seed, calib_batches)
    with torch.no_grad():
        test = zoo.evaluate(model, zoo.test_data())["mAP"]
        val = zoo.evaluate(model, zoo.val_data())["mAP"]
    return {"test": test, "val": val, "seconds": seconds, "quantizers": enabled_quantizers(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| seed | test mAP | val mAP | seconds | quantizers |\n|---|---|---|---|---|", flush=True)
    rows = []
    for seed in args.seeds:
        row = run(seed, args.calib_batches)
        rows.append(row)
        print(f"| {seed} | {row['test']:.2f} | {row['val']:.2f} | {row['seconds']:.1f} | {row['quantizers']} |",
              flush=True)
    for key in ("test", "val"):
        values = [r[key] for r in rows]
        print(f"{key}: mean {sum(values) / len(values):.2f}, range {max(values) - min(values):.2f}")


if __name__ == "__main__":
    main()
