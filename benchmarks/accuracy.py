"""INT8 accuracy of this engine vs FP32, QAT, onnxruntime's own quantizer, NVIDIA Model-Optimizer and a
hand-written pytorch-quantization pipeline, on the zoo models; markdown tables.

    .venv/bin/python benchmarks/accuracy.py [--quick] [--threads N] [--modelopt-python PATH]

Every figure is measured in the run (nothing is hard-coded); the run is deterministic (fixed data, seeds
and thread count). Four tables:

1. **Engine PTQ and QAT per zoo model** (``recipe_engine.pipeline.run_recipe`` into a temp dir, exports
   off with ``export=[]``): PTQ = ``recipes/<model>_int8.yaml``; QAT = ``recipes/centerpoint_qat.yaml``
   for CenterPoint, for digits and BEVFusion the PTQ recipe plus a ``qat:`` section given as a ``--set``
   override (AdamW, constant lr 1e-4; BEVFusion also weight decay 0.01 and grad-norm clip 10). To save one
   BEVFusion run, its PTQ and QAT figures come from the same run (``int8`` is measured before
   fine-tuning, after exactly the PTQ recipe's calibration); digits and CenterPoint get a PTQ run and a QAT
   run, and the table checks that the QAT run's own PTQ stage reproduces the PTQ run bit for bit.
2. **onnxruntime's static quantization** (``quantize_static``: QDQ, per-channel symmetric INT8 weights,
   symmetric INT8 activations as TensorRT needs, ORT's default operator set) of the FP32 ONNX export, on
   the same calibration batches as the recipe, for the digits network and CenterPoint's dense ``bev``
   part (input: the BEV tensor the FP32 sparse encoder produced, captured with a forward pre-hook).
   Compared with the engine's PTQ of the same part on the same split: its fake-quantized PyTorch model
   and its own Q/DQ ONNX export run in onnxruntime (real INT8 kernels, like ORT's rows).
3. **NVIDIA Model-Optimizer** ``INT8_DEFAULT_CFG`` (max calibration) on the same two dense parts, run in a
   *separate* interpreter (``--modelopt-python`` or ``$MODELOPT_PYTHON``; the project's .venv never gets
   it). Without one, or when modelopt fails to import or run, the row says why. A throwaway venv that
   reuses this .venv's torch (nvidia-modelopt is a pure-Python wheel; its import needs huggingface_hub)::

       python3 -m venv /tmp/modelopt-venv
       echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/modelopt-venv/lib/python3.11/site-packages/main.pth
       /tmp/modelopt-venv/bin/pip install --no-deps nvidia-modelopt nvidia-ml-py tqdm omegaconf \\
           'antlr4-python3-runtime==4.9.*' pulp regex safetensors 'setuptools>=80'
       /tmp/modelopt-venv/bin/pip install huggingface_hub

4. **Hand-written pytorch-quantization pipeline** for the sparse CenterPoint
   (``benchmarks/accuracy_parts/handwritten_centerpoint.py``, NVIDIA-script style, same scheme as the
   recipe) vs the engine's recipe, with lines of code of both.

Default (full) run: the recipes' own calibration (CenterPoint/BEVFusion 8 batches x 4 scenes, digits 4 x 64
images), the full validation splits (48 scenes, 360 digits), 100 QAT steps for every model (CenterPoint:
the shipped ``centerpoint_qat.yaml`` unchanged), ORT MinMax, Entropy and Percentile, hand-written MSE and
percentile: about 5 minutes on an idle 2-core machine (several times longer when other jobs share the
cores; BEVFusion QAT dominates: ~1.3 s per fake-quantized step). ``--quick``: 2 calibration batches, 16
validation scenes, QAT 20/10/2 steps (digits/CenterPoint/BEVFusion), ORT MinMax + Percentile, hand-written
MSE only: about 1-2 minutes idle. ``--<model>-qat-steps`` change the full run's QAT lengths. Progress goes
to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RECIPES = ROOT / "recipes"
HANDWRITTEN = ROOT / "benchmarks" / "accuracy_parts" / "handwritten_centerpoint.py"
MODELOPT_WORKER = ROOT / "benchmarks" / "accuracy_parts" / "modelopt_worker.py"
_START = time.perf_counter()


# ----------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """What one run measures (full default or ``--quick``)."""

    quick: bool
    threads: int
    qat_steps: dict[str, int]
    ort_methods: tuple[str, ...]
    hand_methods: tuple[str, ...]
    modelopt_python: str | None
    calib_batches: int | None = None  # None: each recipe's own
    val_scenes: int | None = None  # detectors; None: the zoo's full split (48)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Settings for the parsed command line."""
        python = args.modelopt_python or os.environ.get("MODELOPT_PYTHON") or None
        if args.quick:
            return cls(True, args.threads, {"digits": 20, "centerpoint": 10, "bevfusion": 2},
                       ("MinMax", "Percentile"), ("mse",), python, calib_batches=2, val_scenes=16)
        steps = {"digits": args.digits_qat_steps, "centerpoint": args.centerpoint_qat_steps,
                 "bevfusion": args.bevfusion_qat_steps}
        return cls(False, args.threads, steps,
                   ("MinMax", "Entropy", "Percentile"), ("mse", "percentile"), python)

    def overrides(self, model: str) -> list[str]:
        """``--set`` overrides shared by every engine run of ``model`` (exports off, quick sizes)."""
        out = ["export=[]"]
        if self.calib_batches is not None:
            out.append("calibration.batches=" + str(self.calib_batches) if model == "digits"
                       else "vars.calib_batches=" + str(self.calib_batches))
        if self.val_scenes is not None and model != "digits":
            out.append(f"data.validation.kwargs.count={self.val_scenes}")
        return out

    def qat_overrides(self, model: str) -> list[str]:
        """The QAT run's extra overrides: the shipped QAT recipe's steps, or a short ``qat:`` section."""
        steps = self.qat_steps[model]
        if model == "centerpoint":
            return [] if steps == 100 else [f"qat.steps={steps}"]
        kwargs = "{lr: 1.0e-4, weight_decay: 0.01}" if model == "bevfusion" else "{lr: 1.0e-4}"
        clip = ", grad_clip: 10.0" if model == "bevfusion" else ""
        return [f"qat={{steps: {steps}, optimizer: {{name: AdamW, kwargs: {kwargs}}}{clip}, seed: 0}}"]


def first(batches: Iterable[Any], count: int | None) -> list[Any]:
    """The first ``count`` batches (all when None), as the calibration loop takes them."""
    return list(itertools.islice(batches, count)) if count else list(batches)


def log(message: str) -> None:
    """A progress line on stderr with the elapsed time."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Python warnings from the libraries (exporter, pytorch-quantization, onnxruntime)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def fmt(value: float | None, digits: int = 2) -> str:
    """A metric, or a dash when it was not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def delta(value: float | None, reference: float | None) -> str:
    """Signed difference to ``reference``."""
    return "-" if value is None or reference is None else f"{value - reference:+.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A markdown table; columns whose index is in ``right`` are right-aligned."""
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- 1. engine runs
@dataclass
class EngineRun:
    """One ``run_recipe`` call: its metrics, run directory and wall time."""

    recipe: str
    overrides: list[str]
    metrics: dict[str, Any]
    out: Path
    seconds: float

    def metric(self, stage: str, key: str) -> float | None:
        """``metrics[stage][key]`` (stage: fp32, int8, qat) or None."""
        return (self.metrics.get(stage) or {}).get(key)


def run_engine(recipe: Path, overrides: list[str], out: Path) -> EngineRun:
    """``load_recipe(recipe, overrides)`` then ``run_recipe`` into ``out``."""
    from recipe_engine.pipeline import run_recipe
    from recipe_engine.recipe import load_recipe

    log(f"engine: {recipe.name} {' '.join(overrides)}")
    start = time.perf_counter()
    loaded = load_recipe(recipe, overrides)
    torch.manual_seed(0)
    with quiet():
        metrics = run_recipe(loaded, out, show_progress=False)
    run = EngineRun(recipe.name, overrides, metrics, out, time.perf_counter() - start)
    parts = {k.removesuffix("_seconds"): round(v, 1) for k, v in metrics.get("timings", {}).items()}
    log(f"  {run.seconds:.1f} s: {parts}, calibration {metrics.get('calibration_seconds', 0):.1f}, "
        f"qat {metrics.get('qat_seconds', 0):.1f}")
    return run


@dataclass
class ModelResult:
    """Table 1 row: the PTQ run and the QAT run of one zoo model."""

    model: str
    metric: str
    split: str
    ptq: EngineRun
    qat: EngineRun


def engine_section(settings: Settings, work: Path) -> dict[str, ModelResult]:
    """Run PTQ and QAT for digits, CenterPoint and BEVFusion."""
    splits = {"digits": "360 test images",
              "centerpoint": f"{settings.val_scenes or 48} val scenes",
              "bevfusion": f"{settings.val_scenes or 48} val scenes"}
    results: dict[str, ModelResult] = {}
    for model, metric in (("digits", "top1"), ("centerpoint", "mAP"), ("bevfusion", "mAP")):
        base = settings.overrides(model)
        ptq_recipe = RECIPES / f"{model}_int8.yaml"
        qat_recipe = RECIPES / ("centerpoint_qat.yaml" if model == "centerpoint" else f"{model}_int8.yaml")
        ptq = None if model == "bevfusion" else run_engine(ptq_recipe, base, work / f"{model}_ptq")
        qat = run_engine(qat_recipe, base + settings.qat_overrides(model), work / f"{model}_qat")
        ptq = ptq or qat
        results[model] = ModelResult(model, metric, splits[model], ptq, qat)
    return results


def engine_table(results: dict[str, ModelResult]) -> str:
    """Table 1."""
    rows = []
    for r in results.values():
        fp32, ptq, qat = (r.ptq.metric("fp32", r.metric), r.ptq.metric("int8", r.metric),
                          r.qat.metric("qat", r.metric))
        if r.ptq is r.qat:
            check = "same run"
        else:
            inner = r.qat.metric("int8", r.metric)
            check = "yes" if inner == ptq else f"no ({fmt(inner)})"
        qat_recipe = r.qat.recipe + ("" if r.qat.recipe != r.ptq.recipe else " + `qat=`")
        seconds = f"{r.qat.seconds:.0f}" if r.ptq is r.qat else f"{r.ptq.seconds:.0f} + {r.qat.seconds:.0f}"
        rows.append([r.model, f"{r.metric} ({r.split})", fmt(fp32), fmt(ptq), delta(ptq, fp32), fmt(qat),
                     delta(qat, fp32), f"{qat_recipe}, {r.qat.metrics.get('qat_steps', '-')} steps",
                     check, seconds])
    header = ["model", "metric (split)", "FP32", "INT8 PTQ", "PTQ - FP32", "INT8 QAT", "QAT - FP32",
              "QAT run", "QAT run's PTQ stage = PTQ", "seconds (PTQ + QAT run)"]
    return table(header, rows, right=(2, 3, 4, 5, 6, 9))


# ----------------------------------------------------------------------------------------- shared eval code
class OrtModule(nn.Module):
    """An onnxruntime CPU session called like a one-input nn.Module (for the zoo's evaluate code)."""

    def __init__(self, model_bytes: bytes, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # Q/DQ -> QLinearConv
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on ``x`` (float32) and return its first output."""
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().numpy()})[0])


@dataclass
class DensePart:
    """A dense part to quantize outside the engine: FP32 module, calibration inputs, validation data."""

    name: str
    module: nn.Module
    input_name: str
    calib: list[torch.Tensor]
    val: Any  # what ``evaluate`` runs on (digits batches, or cached BEV tensors + labels)
    evaluate: Callable[[nn.Module], float]
    engine_ptq: nn.Module | None = None  # the engine's PTQ of the same part (fake-quantized)
    engine_calibration: str = "recipe"  # how the engine calibrated it
    extra_rows: list[list[Any]] = field(default_factory=list)


def fp32_onnx(module: nn.Module, example: torch.Tensor, input_name: str) -> bytes:
    """FP32 ONNX (TorchScript exporter, opset 17, BN folded by the exporter, dynamic batch)."""
    buffer = io.BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=17,
                          input_names=[input_name], output_names=["output"], do_constant_folding=True,
                          dynamic_axes={input_name: {0: "batch"}, "output": {0: "batch"}})
    return buffer.getvalue()


def engine_qdq_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """The engine's own Q/DQ export of a quantized dense module (what its ``onnx-qdq`` export writes)."""
    from recipe_engine.export.onnx_qdq import export_qdq, flatten_inputs, flatten_outputs

    name = flatten_inputs(module, (example,), {}).names[0]
    with torch.no_grad():
        outputs, _ = flatten_outputs(module(example))
    axes = {name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    with quiet():
        return export_qdq(module, (example,), {}, dynamic_axes=axes).model.SerializeToString()


def detector_evaluator(val: list[dict[str, torch.Tensor]]) -> Callable[[nn.Module], float]:
    """mAP of a BEV module on cached encoder outputs, with the zoo's own decode + metric code."""
    from recipe_engine.zoo.detection import evaluate_detector

    def evaluate(module: nn.Module) -> float:
        return evaluate_detector(module, val, lambda m, b: m(b["bev_features"]))["mAP"]

    return evaluate


def capture_bev_inputs(model: nn.Module, batches: Sequence[dict], forward: Callable) -> list[torch.Tensor]:
    """The tensors ``model.bev`` receives when the FP32 model runs on ``batches`` (forward pre-hook)."""
    seen: list[torch.Tensor] = []
    handle = model.bev.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        handle.remove()
    return seen


def dense_parts(results: dict[str, ModelResult], settings: Settings) -> list[DensePart]:
    """digits (whole network) and CenterPoint ``bev`` with their data, FP32 and engine PTQ modules."""
    from recipe_engine import data as data_mod
    from recipe_engine.pipeline import load_quantized
    from recipe_engine.recipe import load_recipe
    from recipe_engine.zoo import centerpoint, digits

    parts = []
    loaded = load_recipe(RECIPES / "digits_int8.yaml", settings.overrides("digits"))
    calib = first(data_mod.make_data(loaded, "calibration"), loaded.spec.calibration.batches)
    val = data_mod.make_data(loaded, "validation")
    with quiet():
        engine = load_quantized(results["digits"].ptq.out / "model.pt", model=digits.build(pretrained=True))
    parts.append(DensePart("digits (whole network)", digits.build(pretrained=True), "x",
                           [b["image"] for b in calib], val, lambda m: digits.evaluate(m, val)["top1"], engine,
                           f"recipe: {loaded.spec.calibration.method} (image input: max)"))

    log("capturing CenterPoint BEV tensors (FP32 encoder, forward pre-hook on model.bev)")
    loaded = load_recipe(RECIPES / "centerpoint_int8.yaml", settings.overrides("centerpoint"))
    forward = data_mod.forward_fn(loaded)
    model = centerpoint.build(pretrained=True)
    calib = first(data_mod.make_data(loaded, "calibration"), loaded.spec.calibration.batches)
    val_batches = list(data_mod.make_data(loaded, "validation"))
    calib_bev = capture_bev_inputs(model, calib, forward)
    val_bev = capture_bev_inputs(model, val_batches, forward)
    cached_val = [{"bev_features": f, "gt_cls": b["gt_cls"], "gt_center": b["gt_center"]}
                  for f, b in zip(val_bev, val_batches, strict=True)]
    with quiet():
        engine = load_quantized(results["centerpoint"].ptq.out / "model.pt",
                                centerpoint.build(pretrained=True))
    full = results["centerpoint"].ptq
    part = DensePart("CenterPoint bev (FP32 sparse encoder)", model.bev, "bev_features", calib_bev, cached_val,
                     detector_evaluator(cached_val), engine.bev, f"recipe: {loaded.spec.calibration.method}")
    part.extra_rows.append(["this engine, whole model INT8 (encoder + bev, table 1)", "PyTorch fake-quant",
                            part.engine_calibration, full.metric("int8", "mAP"), "-"])
    parts.append(part)
    return parts


# ----------------------------------------------------------------------------------------- 2. onnxruntime
def ort_quantize(fp32_bytes: bytes, part: DensePart, method: str, symmetric: bool = True) -> tuple[bytes, float]:
    """``quantize_static`` (QDQ, per-channel symmetric S8 weights) -> (model bytes, seconds).

    ``symmetric``: S8 activations with zero point 0 (what TensorRT runs); else ORT's default U8 asymmetric.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration tensors, one feed dict per batch."""

        def __init__(self) -> None:
            self.feeds = iter([{part.input_name: t.numpy()} for t in part.calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    activations = QuantType.QInt8 if symmetric else QuantType.QUInt8
    with tempfile.TemporaryDirectory() as tmp:
        raw, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        raw.write_bytes(fp32_bytes)
        start = time.perf_counter()
        with quiet(), contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=activations, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, method),
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        return out.read_bytes(), time.perf_counter() - start


def activation_scales(model_bytes: bytes) -> dict[str, float]:
    """Per-tensor QuantizeLinear scales of a Q/DQ model, by quantized tensor name."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model_bytes).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1}


ORT_CALIBRATION = {"MinMax": "MinMax", "Percentile": "Percentile 99.999",
                   "Entropy": "Entropy (quantize_static's fixed 128 bins / 128 quantized bins)"}


def ort_section(parts: list[DensePart], settings: Settings) -> tuple[str, dict[str, float]]:
    """Table 2, and the FP32 and engine metric of each part (``name`` / ``engine:name``) for table 3."""
    import onnxruntime

    rows = []
    reference: dict[str, float] = {}
    for part in parts:
        log(f"onnxruntime: {part.name}")
        example = part.calib[0]
        fp32 = part.evaluate(part.module.eval())
        reference[part.name] = fp32
        fp32_bytes = fp32_onnx(part.module, example, part.input_name)
        ort = f"onnxruntime {onnxruntime.__version__}"
        part_rows = [["FP32", "PyTorch", "-", fp32, "-"],
                     ["FP32 ONNX", ort, "-", part.evaluate(OrtModule(fp32_bytes, settings.threads)), "-"]]
        if part.engine_ptq is not None:
            engine = part.evaluate(part.engine_ptq)
            reference[f"engine:{part.name}"] = engine
            qdq = engine_qdq_onnx(part.engine_ptq, example)
            part_rows += [["this engine PTQ (recipe)", "PyTorch fake-quant", part.engine_calibration, engine, "-"],
                          ["this engine PTQ, its Q/DQ ONNX export", f"{ort} INT8", part.engine_calibration,
                           part.evaluate(OrtModule(qdq, settings.threads)), "-"]]
        part_rows += part.extra_rows
        configs = [(m, True) for m in settings.ort_methods] + [("MinMax", False)]
        minmax_scales = None
        for method, symmetric in configs:
            log(f"onnxruntime quantize_static {method}{'' if symmetric else ' U8 asymmetric'}: {part.name}")
            model_bytes, seconds = ort_quantize(fp32_bytes, part, method, symmetric)
            calibration = ORT_CALIBRATION[method]
            if symmetric and method == "MinMax":
                minmax_scales = activation_scales(model_bytes)
            elif symmetric and activation_scales(model_bytes) == minmax_scales:
                calibration += ": activation scales identical to MinMax's (compared)"
            what = ("ORT quantize_static: QDQ, per-channel S8 weights, S8 symmetric activations" if symmetric
                    else "ORT quantize_static: QDQ, per-channel S8 weights, U8 asymmetric activations (ORT "
                         "default; not TensorRT-compatible)")
            part_rows.append([what, f"{ort} INT8", calibration,
                              part.evaluate(OrtModule(model_bytes, settings.threads)), f"{seconds:.1f}"])
        for what, runtime, calib, value, seconds in part_rows:
            rows.append([part.name, what, runtime, calib, fmt(value), delta(value, fp32), seconds])
    header = ["model (part)", "quantized by", "runs in", "calibration", "metric", "- FP32", "quantize s"]
    text = table(header, rows, right=(4, 5, 6))
    used = ", ".join(f"{p.name}: {len(p.calib)}" for p in parts)
    text += (f"\n\nAll quantizers calibrate on the recipe's own calibration batches ({used}). "
             "\"onnxruntime INT8\" rows run real INT8 kernels (Q/DQ fused into QLinearConv & co. at "
             "ORT_ENABLE_ALL).")
    if "Entropy" in settings.ort_methods:
        text += (f" In onnxruntime {onnxruntime.__version__}, quantize_static gives its Entropy calibrator 128 "
                 "histogram bins and 128 quantized bins and has no option to change them, so the KL search has "
                 "a single candidate, the full range.")
    return text, reference


# ----------------------------------------------------------------------------------------- 3. Model-Optimizer
def modelopt_section(parts: list[DensePart], reference: dict[str, float], settings: Settings, work: Path) -> str:
    """Table 3: run the worker in the modelopt interpreter, or say why it could not run."""
    header = ["model (part)", "modelopt config", "metric", "- FP32", "this engine PTQ (same part)",
              "calibrate s", "status (measured)"]
    names = {"digits": parts[0].name, "centerpoint.bev": parts[1].name}
    python = settings.modelopt_python or sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import modelopt, modelopt.torch.quantization; print(modelopt.__version__)"
    try:
        probe = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, check=False)
        failed, reason = probe.returncode != 0, (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
    except OSError as exc:  # no such interpreter
        failed, reason = True, f"{type(exc).__name__}: {exc}"
    if failed:
        where = "this interpreter" if settings.modelopt_python is None else f"`{python}`"
        rows = [[part, "-", "-", "-", fmt(reference.get(f"engine:{part}")), "-",
                 f"not run: `import modelopt` failed in {where}: {reason}"] for part in names.values()]
        return table(header, rows) + ("\n\nPass `--modelopt-python` (or set MODELOPT_PYTHON) to the Python of a "
                                      "separate venv with nvidia-modelopt; see this script's docstring.")
    version = probe.stdout.strip()
    log(f"NVIDIA Model-Optimizer {version}: {python}")
    cache, result = work / "modelopt_cache.pt", work / "modelopt_result.json"
    torch.save({"digits_calib_batches": len(parts[0].calib), "calib": parts[1].calib,
                "val": parts[1].val}, cache)
    run = subprocess.run([python, str(MODELOPT_WORKER), str(cache), str(result), str(settings.threads)],
                         capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0 or not result.is_file():
        reason = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
        rows = [[part, "INT8_DEFAULT_CFG", "-", "-", fmt(reference.get(f"engine:{part}")), "-",
                 f"failed: {reason}"] for part in names.values()]
        return table(header, rows)
    found = json.loads(result.read_text())
    rows = []
    for key, part in names.items():
        entry = found.get(key, {"status": "missing"})
        if entry["status"] != "ok":
            rows.append([part, "INT8_DEFAULT_CFG", "-", "-", fmt(reference.get(f"engine:{part}")), "-",
                         f"failed: {entry['status']}"])
            continue
        same_fp32 = abs(entry["fp32"] - reference[part]) < 1e-6
        status = f"ok, {entry['quantizers']} quantizers, FP32 {'matches' if same_fp32 else 'DIFFERS: '}"
        status += "" if same_fp32 else fmt(entry["fp32"])
        rows.append([part, "INT8_DEFAULT_CFG (max)", fmt(entry["value"]), delta(entry["value"], entry["fp32"]),
                     fmt(reference.get(f"engine:{part}")), f"{entry['seconds']:.1f}", status])
    return table(header, rows, right=(2, 3, 4, 5)) + (
        f"\n\nnvidia-modelopt {found.get('version', version)} on CPU, separate interpreter `{python}`; "
        "same calibration batches; BatchNorm stays unfolded (modelopt quantizes the conv weights before BN).")


# ----------------------------------------------------------------------------------------- 4. hand-written
def python_code_lines(path: Path) -> tuple[int, int]:
    """(all lines, code lines): code excludes blank lines, comment-only lines and docstrings."""
    text = path.read_text()
    skip: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = text.splitlines()
    code = [i for i, line in enumerate(lines, 1)
            if line.strip() and not line.strip().startswith("#") and i not in skip]
    return len(lines), len(code)


def yaml_code_lines(path: Path) -> tuple[int, int]:
    """(all lines, non-blank non-comment lines) of a YAML file."""
    lines = path.read_text().splitlines()
    return len(lines), sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def handwritten_section(results: dict[str, ModelResult], settings: Settings) -> str:
    """Table 4: hand-written NVIDIA-style pipeline vs the recipe, plus lines of code."""
    from accuracy_parts import handwritten_centerpoint as hand

    from recipe_engine import data as data_mod
    from recipe_engine.recipe import load_recipe
    from recipe_engine.zoo import centerpoint

    run = results["centerpoint"].ptq
    loaded = load_recipe(RECIPES / "centerpoint_int8.yaml", settings.overrides("centerpoint"))
    batches = loaded.spec.calibration.batches
    calib = first(data_mod.make_data(loaded, "calibration"), batches)
    val = data_mod.make_data(loaded, "validation")
    fp32 = run.metric("fp32", "mAP")
    log("hand-written pipeline: fold, swap, calibrate (mse)")
    torch.manual_seed(0)
    start = time.perf_counter()
    with quiet():
        model = hand.build_quantized(calib, batches, "mse")
    seconds = time.perf_counter() - start
    enabled = sum(1 for q in hand.quantizers(model) if not q._disabled)
    rows = []
    for method in settings.hand_methods:
        if method != "mse":
            start = time.perf_counter()
            hand.load_amax(model, method)
            seconds_text = f"{time.perf_counter() - start:.1f} (amax only)"
        else:
            seconds_text = f"{seconds:.1f}"
        log(f"hand-written pipeline: evaluate ({method})")
        value = centerpoint.evaluate(model, val)["mAP"]
        what = "MSE" if method == "mse" else "percentile 99.99, same histograms"
        rows.append([f"hand-written pytorch-quantization ({what})", fmt(value), delta(value, fp32),
                     enabled, seconds_text])
    engine_value = run.metric("int8", "mAP")
    engine_seconds = run.metrics.get("calibration_seconds", 0.0) + run.metrics["timings"].get("apply_seconds", 0.0)
    rows.append(["this engine, `recipes/centerpoint_int8.yaml` (MSE)", fmt(engine_value),
                 delta(engine_value, fp32), run.metrics.get("quantizers", "-"), f"{engine_seconds:.1f}"])
    rows.append(["FP32", fmt(fp32), "-", 0, "-"])
    header = ["CenterPoint (sparse encoder + bev), " + f"{settings.val_scenes or 48} val scenes", "mAP",
              "- FP32", "enabled quantizers", "fold/swap + calibrate s"]
    text = table(header, rows, right=(1, 2, 3, 4))

    hand_all, hand_code = python_code_lines(HANDWRITTEN)
    recipe_all, recipe_code = yaml_code_lines(RECIPES / "centerpoint_int8.yaml")
    base_all, base_code = yaml_code_lines(RECIPES / "base" / "int8_tensorrt.yaml")
    export_lines = sum(1 for line in (RECIPES / "centerpoint_int8.yaml").read_text().splitlines()
                       if line.lstrip().startswith(("export:", "- {format:")))
    loc = [["hand-written pipeline (`benchmarks/accuracy_parts/handwritten_centerpoint.py`)", hand_all, hand_code,
            "PTQ only: no export, no verification, no lock/metadata, no QAT/sensitivity; model-specific classes"],
           ["`recipes/centerpoint_int8.yaml`", recipe_all, recipe_code,
            f"includes {export_lines} export lines (libspconv + Q/DQ ONNX + TensorRT) the hand-written file "
            "lacks"],
           ["+ `recipes/base/int8_tensorrt.yaml` (extended)", base_all, base_code, "shared by every recipe"],
           ["recipe total", recipe_all + base_all, recipe_code + base_code,
            "plus ~3 lines of Python to use it (`load_recipe`, `prepare`) or one `recipe run` command"]]
    text += "\n\n" + table(["artefact", "lines", "code lines", "notes"], loc, right=(1, 2))
    text += ("\n\nCode lines: not blank, not comment-only, not docstrings. Both use the zoo's data and mAP code "
             "(not counted). The hand-written scheme mirrors the recipe; ConvTranspose2d weights use axis 1 "
             "(pytorch-quantization's default for QuantConvTranspose2d is axis 0, the input channels).")
    return text


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    """Parse arguments, run the four sections, print the tables and the total runtime."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller calibration/validation/QAT (about 4 min)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch/onnxruntime threads")
    parser.add_argument("--digits-qat-steps", type=int, default=100, help="digits QAT steps (full run)")
    parser.add_argument("--centerpoint-qat-steps", type=int, default=100,
                        help="CenterPoint QAT steps (full run; 100 = the shipped centerpoint_qat.yaml unchanged)")
    parser.add_argument("--bevfusion-qat-steps", type=int, default=100, help="BEVFusion QAT steps (full run)")
    parser.add_argument("--modelopt-python", help="Python of a separate venv with nvidia-modelopt "
                        "(default: $MODELOPT_PYTHON, else this interpreter)")
    settings = Settings.from_args(parser.parse_args())
    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    logging.getLogger("pytorch_quantization").setLevel(logging.ERROR)
    import recipe_engine.quant.backend  # noqa: F401  (quietens pytorch-quantization's absl logging)

    print(f"# INT8 accuracy ({'--quick' if settings.quick else 'full default'} run), torch {torch.__version__}, "
          f"{settings.threads} threads\n")
    with tempfile.TemporaryDirectory(prefix="accuracy-bench-") as tmp:
        work = Path(tmp)
        results = engine_section(settings, work)
        print("## 1. This engine: FP32 vs INT8 PTQ vs INT8 QAT (PyTorch fake-quant, CPU)\n")
        print(engine_table(results) + "\n", flush=True)

        parts = dense_parts(results, settings)
        ort_text, reference = ort_section(parts, settings)
        print("## 2. onnxruntime static quantization vs this engine, dense parts\n")
        print(ort_text + "\n", flush=True)

        print("## 3. NVIDIA Model-Optimizer, dense parts\n")
        print(modelopt_section(parts, reference, settings, work) + "\n", flush=True)

        print("## 4. Hand-written pytorch-quantization pipeline (NVIDIA style) vs recipe, sparse CenterPoint\n")
        print(handwritten_section(results, settings) + "\n", flush=True)
    print(f"Total runtime: {time.perf_counter() - _START:.0f} s "
          f"({'--quick' if settings.quick else 'full default'}, {settings.threads} threads)")


if __name__ == "__main__":
    main()
