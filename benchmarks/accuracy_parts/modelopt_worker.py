"""NVIDIA Model-Optimizer (``nvidia-modelopt``) INT8 PTQ of the zoo's dense parts, run in its own interpreter.

``benchmarks/accuracy.py`` starts this file with the Python of a separate virtual environment that has
``nvidia-modelopt`` (never the project's ``.venv``)::

    MODELOPT_PYTHON/bin/python benchmarks/accuracy_parts/modelopt_worker.py CACHE.pt RESULT.json

``CACHE.pt`` (written by ``accuracy.py``, loaded with ``weights_only=True``) holds the number of digits
calibration batches and, for CenterPoint, the BEV tensors the FP32 sparse encoder produced on the
calibration and validation scenes plus the validation labels. Each model is quantized with modelopt's
documented CNN preset ``INT8_DEFAULT_CFG`` (per-channel max weights, per-tensor max inputs) and
``mtq.quantize(model, cfg, forward_loop)``, then evaluated with the zoo's metric code. RESULT.json gets
one entry per model: ``{"metric", "value", "fp32", "seconds", "status"}``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _digits(calib_batches: int) -> dict[str, Any]:
    """Whole digits network: FP32 top-1, then modelopt INT8 top-1."""
    import modelopt.torch.quantization as mtq

    from recipe_engine.zoo import digits

    val = digits.val_data()
    model = digits.build(pretrained=True)
    fp32 = digits.evaluate(model, val)["top1"]
    calib = digits.calibration_data()[:calib_batches]
    start = time.perf_counter()

    def loop(m: torch.nn.Module) -> None:
        for batch in calib:
            digits.forward_batch(m, batch)

    with torch.no_grad():
        model = mtq.quantize(model, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop=loop)
    seconds = time.perf_counter() - start
    return {"metric": "top1", "value": digits.evaluate(model, val)["top1"], "fp32": fp32, "seconds": seconds,
            "quantizers": _enabled(model)}


def _centerpoint_bev(cache: dict[str, Any]) -> dict[str, Any]:
    """CenterPoint dense ``bev`` part on cached FP32 encoder outputs: FP32 mAP, then modelopt INT8 mAP."""
    import modelopt.torch.quantization as mtq

    from recipe_engine.zoo import centerpoint
    from recipe_engine.zoo.detection import evaluate_detector

    bev = centerpoint.build(pretrained=True).bev.eval()
    val = cache["val"]

    def run(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(batch["bev_features"])

    fp32 = evaluate_detector(bev, val, run)["mAP"]
    start = time.perf_counter()

    def loop(m: torch.nn.Module) -> None:
        for features in cache["calib"]:
            m(features)

    with torch.no_grad():
        bev = mtq.quantize(bev, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop=loop)
    seconds = time.perf_counter() - start
    return {"metric": "mAP", "value": evaluate_detector(bev, val, run)["mAP"], "fp32": fp32, "seconds": seconds,
            "quantizers": _enabled(bev)}


def _enabled(model: torch.nn.Module) -> int:
    """Number of enabled modelopt TensorQuantizers."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return sum(1 for m in model.modules() if isinstance(m, TensorQuantizer) and m.is_enabled)


def main() -> None:
    """Entry point: ``modelopt_worker.py CACHE.pt RESULT.json``."""
    cache_path, out_path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads())
    cache = torch.load(cache_path, map_location="cpu", weights_only=True)
    import modelopt

    results: dict[str, Any] = {"version": modelopt.__version__}
    jobs = {"digits": lambda: _digits(int(cache["digits_calib_batches"])),
            "centerpoint.bev": lambda: _centerpoint_bev(cache)}
    for name, job in jobs.items():
        try:
            results[name] = {"status": "ok", **job()}
        except Exception as exc:  # noqa: BLE001 - report any failure as the measured reason
            traceback.print_exc()
            results[name] = {"status": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
    Path(out_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
