"""Train a zoo model deterministically on CPU and write its checkpoint.

    python -m recipe_engine.zoo.train NAME [--steps N] [--out PATH] [--threads T]

NAME is ``centerpoint``, ``bevfusion``, ``digits`` or ``pointpillars``. Hyper-parameters live in each model
module's ``TRAIN`` dict. The checkpoint (state_dict + metadata with the FP32 validation
metric and the command) is written atomically to ``recipe_engine/zoo/checkpoints/NAME.pt``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .checkpoint import checkpoint_path, save_checkpoint

MODELS = ("centerpoint", "bevfusion", "digits", "pointpillars")


def model_module(name: str) -> ModuleType:
    """The zoo module implementing ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; expected one of {MODELS}")
    return importlib.import_module(f"{__package__}.{name}")


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(name: str, steps: int | None = None, out: str | Path | None = None, threads: int = 1,
          log_every: int = 25, eval_every: int = 0, command: str | None = None) -> dict[str, Any]:
    """Train ``name`` from scratch, evaluate on val, save the checkpoint; returns its metadata."""
    mod = model_module(name)
    cfg = dict(mod.TRAIN)
    steps = int(steps or cfg["steps"])
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.get("seed", 0))
    np.random.seed(cfg.get("seed", 0))
    model = mod.build()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 1e-2))
    warmup = int(cfg.get("warmup", max(1, steps // 20)))
    t0 = time.perf_counter()
    step, epoch, running = 0, 0, 0.0
    while step < steps:
        for batch in mod.train_data(seed=epoch, **cfg.get("data", {})):
            if step >= steps:
                break
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, steps, cfg["lr"], warmup)
            loss = mod.loss(mod.forward_batch(model, batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.get("clip", 10.0))
            opt.step()
            running += loss.item()
            step += 1
            if log_every and step % log_every == 0:
                print(f"step {step}/{steps} loss {running / log_every:.4f} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
                running = 0.0
            if eval_every and step % eval_every == 0 and step < steps:
                print(f"  val {mod.evaluate(model, mod.val_data())}", flush=True)
        epoch += 1
    train_seconds = time.perf_counter() - t0
    model.eval()
    metrics = mod.evaluate(model, mod.val_data())
    meta = {
        "model": name,
        "metric_name": mod.METRIC,
        "metric": float(metrics[mod.METRIC]),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "command": command or f"python -m recipe_engine.zoo.train {name} --steps {steps} --threads {threads}",
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "threads": threads,
        "torch": str(torch.__version__),
    }
    path = save_checkpoint(out or checkpoint_path(name), model, meta)
    print(f"{name}: FP32 val {mod.METRIC} = {meta['metric']:.4f}  {metrics}")
    print(f"trained {steps} steps in {train_seconds:.0f}s; wrote {path}")
    return meta


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=MODELS)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: module TRAIN)")
    parser.add_argument("--out", default=None, help="checkpoint path (default: zoo/checkpoints/NAME.pt)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (checkpoints used 1)")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps")
    args = parser.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python -m recipe_engine.zoo.train " + " ".join(shlex.quote(a) for a in argv_used)
    train(args.name, args.steps, args.out, args.threads, eval_every=args.eval_every, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
