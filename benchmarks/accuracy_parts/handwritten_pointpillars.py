"""PointPillars INT8 PTQ written by hand with pytorch-quantization, the way NVIDIA's scripts do it.

The peer the recipes ``recipes/pointpillars_int8.yaml`` / ``_mixed.yaml`` are compared with: what a
user who follows NVIDIA's Lidar_AI_Solution QAT/PTQ scripts (CUDA-BEVFusion ``qat/ptq.py`` and
``qat/lean/quantize.py``, CUDA-CenterPoint ``qat/tools/sparseconv_quantization.py`` and
``centerpoint_qat_pipline.py``) writes for the zoo PointPillars. Only torch and pytorch-quantization
are used for the quantization (not the engine); model, data and mAP are the zoo's. Each choice and
where it comes from:

* **Module replacement** (BEVFusion ``replace_to_quantization_module``): every module whose type is in
  ``quant_modules._DEFAULT_QUANT_MAP`` becomes its ``quant_nn`` class with the same ``__dict__`` (NVIDIA
  copies ``vars()``; no global monkey-patching by ``quant_modules.initialize()``). Here: the PFN
  ``Linear``, the SECOND and head ``Conv2d`` and the FPN ``ConvTranspose2d``: 16 layers.
* **Input descriptor**: ``QuantDescriptor(calib_method="histogram")``, 8 bit per tensor (BEVFusion
  ``initialize()`` sets it as every replaced class's default; here it is passed per instance, so no
  global state changes). **Weights**: the library defaults, max calibration, one scale per row of
  ``axis 0``: per output channel for Conv2d/Linear, and for ``ConvTranspose2d`` (weight
  ``[in, out, kh, kw]``) per *input* channel, because 2.1.3's ``QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL``
  is ``axis=(0)`` and NVIDIA's scripts use it unchanged (BEVFusion maps mmcv's ConvTranspose2d to it).
* **BN folding** (BEVFusion ``ptq.py`` ``fuse_conv_bn``, after replacement): a BatchNorm directly after
  a ``Conv2d``/``QuantConv2d`` in the same parent is folded (mmcv's float32 formula) and replaced by
  ``Identity``; after ``ConvTranspose2d`` it is not (NVIDIA leaves that case commented out) and neither
  is the PFN's ``BatchNorm1d`` after the Linear (the function only knows convs). With per-row weight
  scales along the output axis an unfolded BN changes nothing (the row scale absorbs the BN factor),
  so this matters only for the FPN deconvolutions, whose scales run along the input axis.
* **No concat quantizer**: NVIDIA's BEVFusion decoder (SECOND + SECONDFPN, this model's BEV part) gets
  no ``QuantConcat``; the head's first conv quantizes the concatenated map with one scale, which is
  what the recipe's ``share`` of ``bev.neck.cat0`` with ``bev.head.shared_conv.0.input`` gives too.
* **Calibration** (``calibrate_model``): quantization off / calibration on for every quantizer, forward
  the batches without gradients, then ``load_calib_amax()`` for max calibrators and
  ``load_calib_amax(method="mse")`` for histograms (their default; ``percentile`` is pytorch-quantization's
  99.99). Upstream's MSE search calls ``.cuda()``; on a CPU, :func:`mse_amax` runs the same search
  (bin centres from bin 128, stride 1, count-weighted squared error of ``fake_tensor_quant``, argmin)
  on the CPU. NVIDIA's loop runs ``num_batch + 1`` batches (``if i >= num_batch: break`` after the
  forward); here exactly ``calib_batches``, so the data are the recipe's.
* **First layer in FP16** (both scripts ``disable_quantization(...conv_input).apply()`` after
  calibration; CenterPoint also the first residual block, BEVFusion also ``decoder.neck.deblocks[0][0]``,
  model-specific picks not kept here; BEVFusion's ``deblocks[0][0]`` exists here too, and switching off
  ``bev.neck.deblocks.0.0`` as well moved seed 0 from 74.29 / 85.07 to 74.20 / 85.25 test mAP, PFN INT8 /
  FP16): the analogue is the PFN ``Linear``, the layer that reads the raw point decorations.
  ``first_layer_fp16=True`` disables its two quantizers; ``False`` keeps every layer INT8 (like the
  plain recipe).

Data are the recipe's: ``calibration_data(count=32, seed=seed)`` (4 scenes a batch, first
``calib_batches``), and ``val_data()`` / ``test_data()`` (48 scenes each). ``seconds`` is the wall time
from module replacement to the last amax (the calibration scenes are generated before the clock).

Measured (pytorch-quantization 2.1.3, CPU, 1 thread, calibration seeds 0 / 1 / 2, test / val mAP; FP32
85.16 / 84.70): mse, all INT8 74.29 / 73.96 / 74.02 test (mean 74.09), 75.08 / 75.08 / 75.11 val; mse,
PFN FP16 85.07 / 85.16 / 85.12 (85.12), 84.54 / 84.69 / 84.58; percentile, all INT8 72.28 / 72.05 / 72.03
(72.12), 73.79 / 73.66 / 73.66; percentile, PFN FP16 84.08 / 84.13 / 84.19 (84.13), 83.87 / 84.07 / 83.95.
1.1-2.2 s from replacement to the last amax, under load from other jobs.

``benchmarks/accuracy.py`` calls :func:`run`; ``python benchmarks/accuracy_parts/handwritten_pointpillars.py``
prints the table over calibration seeds 0, 1, 2, both methods and both first-layer variants.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from absl import logging as quant_logging
from pytorch_quantization import nn as quant_nn
from pytorch_quantization import quant_modules
from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator
from pytorch_quantization.nn.modules._utils import QuantInputMixin
from pytorch_quantization.tensor_quant import QuantDescriptor, fake_tensor_quant
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recipe_engine.zoo import pointpillars as zoo  # noqa: E402 - after the sys.path line for script use

CALIB_SCENES = 32  # recipes/pointpillars_int8.yaml: data.calibration.kwargs.count
FIRST_LAYER = "pillar_net.pfn.0"  # the PFN Linear: this model's conv_input
ACT = QuantDescriptor(num_bits=8, calib_method="histogram")
METHODS = ("mse", "percentile", "entropy")


def replace_to_quantization(model: nn.Module) -> None:
    """Swap every module of a ``_DEFAULT_QUANT_MAP`` type for its quantized class (same ``__dict__``)."""
    table = {getattr(entry.orig_mod, entry.mod_name): entry.replace_mod for entry in quant_modules._DEFAULT_QUANT_MAP}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            cls = table.get(type(child))
            if cls is None:
                continue
            quant = cls.__new__(cls)
            quant.__dict__.update(child.__dict__)
            quant._fake_quant = True
            quant._input_quantizer = quant_nn.TensorQuantizer(ACT)
            if not issubclass(cls, QuantInputMixin):  # pools have no weight
                quant._weight_quantizer = quant_nn.TensorQuantizer(cls.default_quant_desc_weight)
            setattr(parent, name, quant)


def fuse_conv_bn(module: nn.Module) -> None:
    """Fold each BatchNorm that directly follows a Conv2d among its siblings (recursively)."""
    last: tuple[str, nn.Conv2d] | None = None
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and last is not None:
            conv = last[1]
            factor = child.weight / torch.sqrt(child.running_var + child.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(child.running_mean)
            with torch.no_grad():
                conv.weight = nn.Parameter(conv.weight * factor.reshape(-1, 1, 1, 1))
                conv.bias = nn.Parameter((bias - child.running_mean) * factor + child.bias)
            setattr(module, name, nn.Identity())
            last = None
        elif type(child) in (nn.Conv2d, quant_nn.QuantConv2d):
            last = (name, child)
        else:
            fuse_conv_bn(child)


def quantizers(model: nn.Module) -> list[tuple[str, quant_nn.TensorQuantizer]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, quant_nn.TensorQuantizer)]


def mse_amax(calibrator: HistogramCalibrator, start_bin: int = 128, chunk: int = 256) -> torch.Tensor:
    """Upstream ``_compute_amax_mse`` on the CPU: the bin centre whose 8-bit fake quantization of the
    histogram has the smallest count-weighted squared error (candidates from ``start_bin``)."""
    counts = torch.as_tensor(calibrator._calib_hist).float().cpu()
    edges = torch.as_tensor(calibrator._calib_bin_edges).float().cpu()
    centers = (edges[1:] + edges[:-1]) / 2
    candidates = centers[start_bin:]
    errors = []
    for part in candidates.split(chunk):  # a block of candidate amax values at a time
        quantized = fake_tensor_quant(centers.expand(len(part), -1), part[:, None], calibrator._num_bits,
                                      calibrator._unsigned)
        errors.append(((quantized - centers) ** 2 * counts).mean(dim=1))
    return candidates[int(torch.argmin(torch.cat(errors)))].clone()


@torch.no_grad()
def calibrate_model(model: nn.Module, batches: Sequence, method: str = "mse", percentile: float = 99.99) -> None:
    """Collect statistics with quantization off, then load every quantizer's amax."""
    model.eval()
    for _, q in quantizers(model):
        q.disable_quant()
        q.enable_calib()
    for batch in batches:
        zoo.forward_batch(model, batch)
    for _, q in quantizers(model):
        q.enable_quant()
        q.disable_calib()
    for _, q in quantizers(model):
        if isinstance(q._calibrator, MaxCalibrator):
            q.load_calib_amax()
        elif method == "mse":
            amax = mse_amax(q._calibrator)
            if hasattr(q, "_amax"):
                q._amax.copy_(amax)
            else:
                q.register_buffer("_amax", amax)
        else:
            q.load_calib_amax(method=method, percentile=percentile)


def disable_quantization(module: nn.Module) -> None:
    """Switch off every quantizer under ``module`` (its layers run in full precision)."""
    for _, q in quantizers(module):
        q.disable()


def quantize(seed: int, method: str = "mse", first_layer_fp16: bool = False,
             calib_batches: int = 8) -> tuple[nn.Module, float]:
    """The pretrained zoo model quantized and calibrated by hand, and the seconds that took."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    quant_logging.set_verbosity(quant_logging.ERROR)  # NVIDIA's initialize(): no per-quantizer amax warnings
    batches = list(zoo.calibration_data(count=CALIB_SCENES, seed=seed))[:calib_batches]
    model = zoo.build(pretrained=True).eval()
    start = time.perf_counter()
    replace_to_quantization(model)
    fuse_conv_bn(model)
    calibrate_model(model, batches, method)
    if first_layer_fp16:
        disable_quantization(model.get_submodule(FIRST_LAYER))
    return model, time.perf_counter() - start


def enabled_quantizers(model: nn.Module) -> int:
    return sum(1 for _, q in quantizers(model) if not q._disabled)


def run(seed: int, method: str = "mse", first_layer_fp16: bool = False, calib_batches: int = 8) -> dict:
    """returns {"test": mAP_test, "val": mAP_val, "seconds": calibration+quantization wall time, "quantizers": n}"""
    model, seconds = quantize(seed, method, first_layer_fp16, calib_batches)
    with torch.no_grad():
        test = zoo.evaluate(model, zoo.test_data())["mAP"]
        val = zoo.evaluate(model, zoo.val_data())["mAP"]
    return {"test": test, "val": val, "seconds": seconds, "quantizers": enabled_quantizers(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["mse", "percentile"], choices=METHODS)
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| method | first layer | seed | test mAP | val mAP | seconds | quantizers |\n|---|---|---|---|---|---|---|",
          flush=True)
    summary = []
    for method in args.methods:
        for fp16 in (False, True):
            rows = [run(seed, method, fp16, args.calib_batches) for seed in args.seeds]
            for seed, row in zip(args.seeds, rows, strict=True):
                print(f"| {method} | {'FP16' if fp16 else 'INT8'} | {seed} | {row['test']:.2f} | {row['val']:.2f} "
                      f"| {row['seconds']:.1f} | {row['quantizers']} |", flush=True)
            summary.append((method, fp16, rows))
    for method, fp16, rows in summary:
        text = [f"{method} first layer {'FP16' if fp16 else 'INT8'}:"]
        for key in ("test", "val"):
            values = [r[key] for r in rows]
            text.append(f"{key} mean {sum(values) / len(values):.2f} range {max(values) - min(values):.2f};")
        print(" ".join(text))


if __name__ == "__main__":
    main()
