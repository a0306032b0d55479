"""Training-step time: QAT (fake-quantized, as a recipe builds it) vs the FP32 model, as a markdown table.

    .venv/bin/python benchmarks/qat_step.py [RECIPE ...] [--steps 10] [--threads 2]

For each recipe (default: the zoo CenterPoint QAT recipe and the digits recipe) both models take
the same optimizer steps (forward, loss, backward, AdamW step) on the same ``data.train``
batches. The FP32 model is the recipe's model as built (BatchNorm unfused); the QAT model is it
after ``apply`` + ``calibrate`` (BN folded, quantizers inserted, amax fixed).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from recipe_engine import data as data_mod
from recipe_engine.pipeline import apply, calibrate
from recipe_engine.recipe import load_recipe
from recipe_engine.recipe.loader import LoadedRecipe
from recipe_engine.recipe.schema import OptimizerSpec
from recipe_engine.train.loss import compute_loss, loss_source
from recipe_engine.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = [ROOT / "recipes" / "centerpoint_qat.yaml", ROOT / "recipes" / "digits_int8.yaml"]


def step_times(loaded: LoadedRecipe, model: nn.Module, batches: list, warmup: int = 2) -> list[float]:
    """Milliseconds of each optimizer step after ``warmup`` steps."""
    forward = data_mod.forward_fn(loaded)
    source = loss_source(loaded)
    spec = loaded.spec.qat.optimizer if loaded.spec.qat else OptimizerSpec(name="AdamW", kwargs={"lr": 1e-5})
    optimizer = build_optimizer(model, spec, loaded)
    model.train()
    times = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        loss, _ = compute_loss(forward(model, batch), batch, source)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    return times


def measure(path: Path, steps: int) -> dict:
    loaded = load_recipe(path, ["calibration.batches=2"])
    batches = list(itertools.islice(data_mod.make_data(loaded, "train"), steps + 2))
    fp32 = data_mod.build_model(loaded)
    fp32_ms = step_times(loaded, fp32, batches)

    model = data_mod.build_model(loaded)
    calib = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)
    apply(model, loaded, calib, forward)
    calibrate(model, loaded, calib, forward, show_progress=False)
    qat_ms = step_times(loaded, model, batches)
    return {"recipe": loaded.spec.recipe, "model": type(fp32).__name__, "batch": _batch_size(batches[0]),
            "fp32": statistics.median(fp32_ms), "qat": statistics.median(qat_ms)}


def _batch_size(batch) -> str:
    if isinstance(batch, dict):
        if "batch_size" in batch:
            return str(int(batch["batch_size"]))
        first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        return str(first.shape[0])
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", type=Path, default=DEFAULT_RECIPES)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU, median of {args.steps} steps "
          "(forward + loss + backward + optimizer step)\n")
    print("| recipe | model | batch | FP32 step ms | QAT step ms | QAT / FP32 |")
    print("|---|---|---:|---:|---:|---:|")
    for path in args.recipes:
        row = measure(path, args.steps)
        print(f"| {row['recipe']} | {row['model']} | {row['batch']} | {row['fp32']:.1f} | {row['qat']:.1f} | "
              f"{row['qat'] / row['fp32']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
