"""Recipe application time (select + fuse + quantize + disable) on synthetic models of 1k to 10k modules.

Prints markdown tables: per-stage times (select+plan, fuse, quantize, disable), the total, the
growth ratio vs the 1k model (linear scaling gives ratio ~= modules / 1000) and the full (gen 2)
cyclic-GC passes that fell inside the timed stages with their time. A full pass scans the whole
interpreter heap (torch's own objects included), so one that lands in a stage adds a step of
~0.1 s that says nothing about the engine's algorithm; the "without GC" column subtracts it.
One untimed warm-up run (imports, first-call caches) comes first; each model is collected
(``gc.collect()``) after it is built, so its construction garbage is not charged to application.
The second table adds a share group over a quarter of the quantizers and ``disable: ["**"]``; the third
fuses ``within`` a selector that selects every module (the scope test is a set lookup per name).
Every cell is the median of ``--repeat`` measurements, sizes and recipes interleaved.

    .venv/bin/python benchmarks/apply_scaling.py [--repeat 3] [--recipes base share within] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
from torch import nn

from recipe_engine.fuse import apply_fusions
from recipe_engine.quant.apply import apply_quantization, disable_matching, plan_quantization
from recipe_engine.recipe import load_recipe_data

RECIPE = load_recipe_data({
    "recipe": "bench", "version": "1.0.0",
    "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d", "BatchNorm2d"]}],
    "rules": [{"select": {"type": "Conv2d"}, "quantize": {"input": "act", "weight": "w"}},
              {"select": {"name": "re:stage\\d+\\.block1\\.0", "type": "Conv2d"}, "quantize": False}],
    "disable": ["stage0.*"],
}).spec


def synthetic_model(modules: int) -> nn.Module:
    """Stages of Sequential(Conv2d, BatchNorm2d, ReLU) blocks with about ``modules`` modules in all."""
    blocks_per_stage = 25
    blocks = max(1, modules // 4)
    stages = nn.Module()
    for s in range((blocks + blocks_per_stage - 1) // blocks_per_stage):
        stage = nn.Module()
        for b in range(min(blocks_per_stage, blocks - s * blocks_per_stage)):
            stage.add_module(f"block{b}", nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()))
        stages.add_module(f"stage{s}", stage)
    return stages.eval()


SHARE_RECIPE = load_recipe_data({
    "recipe": "bench-share", "version": "1.0.0",
    "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d", "BatchNorm2d"]}],
    "rules": [{"select": {"type": "Conv2d"}, "quantize": {"input": "act", "weight": "w"}}],
    "share": [{"quantizers": ["stage*.block*.0.input", "stage0.block0.0.input"]}],
    "disable": ["**"],
}).spec


class FullCollections:
    """Counts full (generation 2) GC passes and their time while installed."""

    def __init__(self) -> None:
        self.count, self.seconds, self._start = 0, 0.0, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start


def measure(modules: int, recipe=RECIPE) -> dict[str, float]:
    torch.manual_seed(0)
    model = synthetic_model(modules)
    count = sum(1 for _ in model.modules())
    gc.collect()
    full = FullCollections()
    gc.callbacks.append(full)
    try:
        tick = time.perf_counter()
        plan_quantization(model, recipe)
        planned = time.perf_counter() - tick
        tick = time.perf_counter()
        apply_fusions(model, recipe)
        fused = time.perf_counter() - tick
        tick = time.perf_counter()
        state = apply_quantization(model, recipe)
        quantized = time.perf_counter() - tick
        tick = time.perf_counter()
        disable_matching(state, recipe.disable)
        disabled = time.perf_counter() - tick
    finally:
        gc.callbacks.remove(full)
    total = planned + fused + quantized + disabled
    return {"modules": count, "plan": planned, "fuse": fused, "quantize": quantized, "disable": disabled,
            "total": total, "gc_passes": full.count, "gc": full.seconds, "engine": total - full.seconds}


SCOPED_RECIPE = load_recipe_data({
    "recipe": "bench-within", "version": "1.0.0",
    "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d", "BatchNorm2d"], "within": {"name": "re:stage\\d+(\\..*)?"}}],
    "rules": [{"select": {"type": "Conv2d"}, "quantize": {"input": "act", "weight": "w"}}],
}).spec

RECIPES = {"base": (RECIPE, "Conv2d+BatchNorm2d fusion, one quantize rule, one exclusion rule, disable stage0.*"),
           "share": (SHARE_RECIPE, "as base plus a share group of every block's first conv input, disable **"),
           "within": (SCOPED_RECIPE, "fusion with `within` selecting every module (a scope of ~10k names), "
                                     "one quantize rule")}
SIZES = (1000, 2500, 5000, 10000)
KEYS = ("plan", "fuse", "quantize", "disable", "total", "gc_passes", "gc", "engine")


def run(recipes: list[str], repeat: int) -> dict[str, list[dict[str, float]]]:
    """Per recipe and size, the median of ``repeat`` measurements of each figure (sizes and recipes interleaved
    within every repeat, so that load from other processes falls on all alike)."""
    samples: dict[tuple[str, int], list[dict]] = {(r, n): [] for r in recipes for n in SIZES}
    for _ in range(repeat):
        for r in recipes:
            for n in SIZES:
                samples[r, n].append(measure(n, RECIPES[r][0]))
    return {r: [{"modules": samples[r, n][0]["modules"],
                 **{k: statistics.median(s[k] for s in samples[r, n]) for k in KEYS}} for n in SIZES]
            for r in recipes}


def table(rows: list[dict[str, float]]) -> None:
    base = rows[0]
    print("| modules | select+plan s | fuse s | quantize s | disable s | total s | full GC passes (s) | "
          "total without GC s | time ratio vs 1k (without GC) | size ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['modules']} | {row['plan']:.3f} | {row['fuse']:.3f} | {row['quantize']:.3f} | "
              f"{row['disable']:.3f} | {row['total']:.3f} | {row['gc_passes']:g} ({row['gc']:.3f}) | "
              f"{row['engine']:.3f} | {row['total'] / base['total']:.2f} ({row['engine'] / base['engine']:.2f}) | "
              f"{row['modules'] / base['modules']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="measurements per cell; the tables show medians")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--json", action="store_true", help="print the medians as JSON instead of tables")
    args = parser.parse_args()
    measure(1000)  # warm-up: imports and first-call caches, not timed
    results = run(args.recipes, args.repeat)
    if args.json:
        print(json.dumps(results))
        return
    for r, rows in results.items():
        print(f"\nrecipe {r}: {RECIPES[r][1]} (median of {args.repeat})")
        table(rows)


if __name__ == "__main__":
    main()
