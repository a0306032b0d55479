"""INT8 accuracy side by side, in one run: every method on every zoo model, over several calibration seeds.

    .venv/bin/python benchmarks/accuracy.py [--quick] [--models pointpillars,digits,centerpoint,bevfusion]
        [--seeds 0,1,2] [--threads N] [--out FILE]

One markdown table per model (PointPillars, the model plain INT8 hurts, first), rows:

* FP32; this engine's INT8 PTQ with calibration ``max`` / ``entropy`` / ``mse`` / ``percentile``
  (``recipes/<model>_int8.yaml --set calibration.method=...``, exports off);
* each PTQ step (``--set ptq=[{step: ...}]``: bias_correction, cle, range_search, adaround, brecq) and the
  combination range_search + adaround, on the recipe's own calibration method;
* mixed precision: ``recipes/pointpillars_int8_mixed.yaml`` (sensitivity-guided) and a ``tune:`` run
  (``--set tune={...}``), and ``recipes/pointpillars_int8_smooth.yaml`` when that file exists;
* QAT: ``recipes/centerpoint_qat.yaml``, else the plain recipe plus a short ``qat:`` section;
* peers on the same calibration batches and splits: onnxruntime ``quantize_static`` (QDQ, S8S8,
  per-channel; MinMax, Entropy, Percentile) on the dense parts, NVIDIA Model-Optimizer ``INT8_DEFAULT_CFG``
  in-process, the hand-written NVIDIA-style pytorch-quantization pipeline (CenterPoint:
  ``accuracy_parts/handwritten_centerpoint.py``; PointPillars: ``accuracy_parts/handwritten_pointpillars.py``
  and ``modelopt_pointpillars.py`` when present).

Each figure is the mean +- sample standard deviation over the calibration seeds
(``data.calibration.kwargs.seed``: which calibration scenes are drawn), on the held-out ``data.test`` split
and on ``data.validation`` (digits has one split); "drop" is FP32 minus the mean; "quantize s" is the
wall time of fuse/quantize + calibration + PTQ (+ tuning / fine-tuning), never evaluation. Every figure is
measured in the run; for fixed seeds and threads the run is deterministic. ``--quick``: 2 calibration
batches, 16-scene splits, PTQ steps with tiny budgets (10 rounding iterations, 1 batch), 5 QAT steps.
Progress goes to stderr; the tables go to stdout and, rewritten after every measurement (so an
interrupted run leaves its partial tables), to ``--out``. Parts: ``benchmarks/accuracy_parts/``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy_parts.common import RECIPES, Row, elapsed, first, fmt, log, quiet, table  # noqa: E402,F401
from accuracy_parts.models import MODELS, Settings  # noqa: E402
from accuracy_parts.ort_tools import (  # noqa: E402,F401  (re-exported for ort_latency.py, pointpillars_peers.py)
    ORT_CALIBRATION,
    DensePart,
    OrtModule,
    capture_bev_inputs,
    detector_evaluator,
    fp32_onnx,
    ort_quantize,
)


def parse(argv: list[str] | None = None) -> Settings:
    """The command line as :class:`Settings`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets and splits (a smoke run)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--seeds", default="0,1,2", help="calibration subset seeds, comma-separated")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch/onnxruntime threads")
    parser.add_argument("--out", type=Path, help="also write the tables to this file (after every measurement)")
    parser.add_argument("--only", default="", help="comma-separated label substrings (case-insensitive): measure "
                                                   "only those rows (and FP32), e.g. --only smooth,hand-written")
    args = parser.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds: give at least one seed")
    only = tuple(o.strip().lower() for o in args.only.split(",") if o.strip())
    return Settings(args.quick, seeds, args.threads, models, args.out, only)


def footer(settings: Settings, seconds: float, done: int, total: int) -> str:
    """The notes under the tables."""
    status = "complete" if done == total else f"PARTIAL: {done} of {total} measurements done"
    return "\n".join([
        f"Run {status}, {seconds:.0f} s, torch {torch.__version__}, {settings.threads} threads.",
        "",
        "Figures: mean ± sample standard deviation over the calibration seeds listed per row "
        "(`--set data.calibration.kwargs.seed=N`: which calibration scenes are drawn from the calib split); rows "
        "that do not depend on the seed are measured once. Detectors: test = `data.test` (held out), val = "
        "`data.validation` (what `tune:` and QAT `keep_best` select on), "
        + ("16 scenes each (--quick)" if settings.quick else "48 scenes each") + "; digits: its one split (360 "
        "test images). Digits' calibration pool is 256 images and the recipe uses all of them (4 batches of 64), "
        "so its seeds only reorder them" + (" (--quick: 2 of the 4 shuffled batches, a sampling spread)"
                                              if settings.quick else "") + ". drop = FP32 - mean (positive: lost).",
        "",
        "quantize s: mean wall seconds of fuse/quantize + calibration + PTQ steps (+ tuning, which evaluates on "
        "validation; + QAT fine-tuning), not evaluation; peers: input capture + quantize_static / mtq.quantize / "
        "the hand-written calibration. The machine is shared: times show relative cost only.",
        "",
        "PTQ step budgets: " + ("--quick: rounding 10 iterations on 1 batch, range search 8 candidates on 1 "
                                "batch, bias correction 1 batch (not the defaults; accuracy rows are indicative)"
                                if settings.quick else "the library defaults (4 batches; adaround/brecq 200 "
                                "iterations per layer/block; range search 40 candidates)") + ".",
        "",
        "onnxruntime rows: the listed dense parts run as INT8 onnxruntime sessions, the rest of the model (sparse "
        "encoders, pillar scatter, view transform) in FP32 PyTorch. quantize_static has no option for its Entropy "
        "calibrator's bins (128 histogram bins, 128 quantized bins), so its KL search has one candidate, the full "
        "range: Entropy rows equal MinMax rows.",
    ])


def main(argv: list[str] | None = None) -> None:
    """Plan every row, run the measurements in priority order, print and write the tables."""
    settings = parse(argv)
    torch.set_num_threads(settings.threads)
    from accuracy_parts.plan import plan
    from accuracy_parts.report import document

    import recipe_engine.quant.backend  # noqa: F401  (quietens pytorch-quantization's absl logging)

    sections, jobs = [], []
    for model_index, name in enumerate(settings.models):
        spec = MODELS[name]
        plans = plan(spec, settings)
        rows = [Row(name, p.label, p.how, status=p.status) for p in plans]
        for row_index, p in enumerate(plans):
            if p.measure is None:
                continue
            if settings.only and p.label != "FP32" and not any(o in p.label.lower() for o in settings.only):
                rows[row_index].status = "not run (--only)"
                continue
            for seed_index, seed in enumerate(settings.seeds if p.seeded else settings.seeds[:1]):
                jobs.append(((p.priority, model_index, row_index, seed_index), rows[row_index], p, seed))
        sections.append((name, spec.metric, rows, spec.detector))
    jobs.sort(key=lambda job: job[0])

    def render(done: int) -> str:
        return document(settings, sections, footer(settings, elapsed(), done, len(jobs)))

    for done, (_, row, p, seed) in enumerate(jobs):
        log(f"[{done + 1}/{len(jobs)}] {row.model}: {row.label}, seed {seed}")
        torch.manual_seed(0)
        np.random.seed(0)
        start = time.perf_counter()
        try:
            with quiet():
                measure = p.measure(seed)
        except Exception as exc:  # noqa: BLE001 - a failed row is reported in the table, the run goes on
            traceback.print_exc()
            row.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            log(f"  {row.status}")
        else:
            row.measures[seed] = measure
            log(f"  test {fmt(measure.test)} val {fmt(measure.val)} quantize {fmt(measure.seconds, 1)} s "
                f"({time.perf_counter() - start:.1f} s with evaluation) {measure.note}")
        if settings.out:
            settings.out.write_text(render(done + 1))
    text = render(len(jobs))
    sys.stdout.write(text)
    sys.stdout.flush()
    if settings.out:
        settings.out.write_text(text)


if __name__ == "__main__":
    main()
