"""Recipe application time (select + fuse + quantize + disable) on synthetic models of 1k to 10k modules.

Prints a markdown table: modules, select+plan, fuse, quantize, total, and the growth ratio vs
the 1k model (linear scaling gives ratio ~= modules / 1000).
"""

from __future__ import annotations

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


def measure(modules: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = synthetic_model(modules)
    count = sum(1 for _ in model.modules())
    tick = time.perf_counter()
    plan_quantization(model, RECIPE)
    planned = time.perf_counter() - tick
    tick = time.perf_counter()
    apply_fusions(model, RECIPE)
    fused = time.perf_counter() - tick
    tick = time.perf_counter()
    state = apply_quantization(model, RECIPE)
    quantized = time.perf_counter() - tick
    tick = time.perf_counter()
    disable_matching(state, RECIPE.disable)
    disabled = time.perf_counter() - tick
    return {"modules": count, "plan": planned, "fuse": fused, "quantize": quantized, "disable": disabled,
            "total": planned + fused + quantized + disabled}


def main() -> None:
    rows = [measure(n) for n in (1000, 2500, 5000, 10000)]
    base = rows[0]
    print("| modules | select+plan s | fuse s | quantize s | disable s | total s | time ratio vs 1k | size ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['modules']} | {row['plan']:.3f} | {row['fuse']:.3f} | {row['quantize']:.3f} | {row['disable']:.3f} | "
              f"{row['total']:.3f} | {row['total'] / base['total']:.2f} | {row['modules'] / base['modules']:.2f} |")


if __name__ == "__main__":
    main()
