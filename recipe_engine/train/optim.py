"""Optimizer and learning-rate schedule from a recipe's ``qat.optimizer`` / ``qat.schedule``.

Parameter groups: ``decay`` (weights), ``no_decay`` (normalization parameters and biases, weight
decay 0, when ``no_decay_on_norm_and_bias``) and ``amax`` (learned amax of quantizers with
``learn_amax``: lr x ``amax_lr_mult``, weight decay 0). Empty groups are left out.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from ..quant import backend
from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe
from ..recipe.schema import OptimizerSpec, ScheduleSpec

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
WHERE = ("qat", "optimizer")


def _optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    return {name: cls for name, cls in vars(torch.optim).items()
            if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer}


def optimizer_class(name: str, loaded: LoadedRecipe | None = None) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class called ``name``; a located RecipeError with suggestions otherwise."""
    classes = _optimizer_classes()
    if name in classes:
        return classes[name]
    folded = {k.lower(): k for k in classes}
    close = [folded[name.lower()]] if name.lower() in folded else difflib.get_close_matches(name, list(classes), 3)
    hint = ("did you mean " + " or ".join(repr(c) for c in close) + "?") if close else \
        "one of: " + ", ".join(sorted(classes))
    raise _error(loaded, (*WHERE, "name"), f"unknown optimizer {name!r}: not a torch.optim class", hint)


def _error(loaded: LoadedRecipe | None, path: tuple, message: str, hint: str | None = None) -> RecipeError:
    if loaded is not None:
        return loaded.error(path, message, hint)
    return RecipeError(message, hint=hint)


def param_groups(model: nn.Module, spec: OptimizerSpec | None = None, lr: float | None = None) -> list[dict[str, Any]]:
    """Trainable parameters of ``model`` in the groups described in the module docstring.

    For users' own optimizers too: ``torch.optim.AdamW(param_groups(model, lr=1e-4), lr=1e-4)``.
    ``lr`` is the base learning rate (default: ``spec.kwargs["lr"]``), used for the amax group's lr.
    """
    spec = spec or OptimizerSpec()
    lr = lr if lr is not None else spec.kwargs.get("lr")
    amax_ids: set[int] = set()
    norm_ids: set[int] = set()
    for module in model.modules():
        if backend.is_quantizer(module):
            amax_ids.update(id(p) for p in module.parameters())
        elif isinstance(module, NORM_TYPES):
            norm_ids.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "amax": []}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in amax_ids:
            groups["amax"].append(param)
        elif spec.no_decay_on_norm_and_bias and (id(param) in norm_ids or name.endswith("bias")):
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    out: list[dict[str, Any]] = []
    if groups["decay"]:
        out.append({"params": groups["decay"], "name": "decay"})
    if groups["no_decay"]:
        out.append({"params": groups["no_decay"], "name": "no_decay", "weight_decay": 0.0})
    if groups["amax"]:
        group: dict[str, Any] = {"params": groups["amax"], "name": "amax", "weight_decay": 0.0}
        if lr is not None:
            group["lr"] = lr * spec.amax_lr_mult
        out.append(group)
    if not out:
        raise RecipeError("the model has no trainable parameter for QAT")
    return out


def build_optimizer(model: nn.Module, spec: OptimizerSpec, loaded: LoadedRecipe | None = None) -> torch.optim.Optimizer:
    """``torch.optim.<spec.name>(param_groups, **spec.kwargs)``; bad names/kwargs are located recipe errors."""
    cls = optimizer_class(spec.name, loaded)
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        known = [k for k in accepted if k not in ("self", "params")]
        for key in spec.kwargs:
            if key not in known:
                close = difflib.get_close_matches(key, known, 1)
                hint = f"did you mean {close[0]!r}?" if close else "accepted: " + ", ".join(known)
                raise _error(loaded, (*WHERE, "kwargs", key), f"{spec.name} has no argument {key!r}", hint)
    default_lr = accepted["lr"].default if "lr" in accepted else None
    lr = default_lr if isinstance(default_lr, float) else None
    try:
        return cls(param_groups(model, spec, spec.kwargs.get("lr", lr)), **spec.kwargs)
    except (TypeError, ValueError) as exc:
        key = _kwarg_in(str(exc), spec.kwargs)
        raise _error(loaded, (*WHERE, "kwargs", key) if key else (*WHERE, "kwargs"),
                     f"{spec.name}({_show(spec.kwargs)}) failed: {exc}") from None


def _kwarg_in(message: str, kwargs: dict[str, Any]) -> str | None:
    """The kwarg an optimizer's error message is about (e.g. 'Invalid learning rate' -> lr)."""
    aliases = {"learning rate": "lr", "momentum": "momentum", "weight_decay": "weight_decay", "beta": "betas",
               "epsilon": "eps", "eps": "eps"}
    lowered = message.lower()
    for word, key in aliases.items():
        if word in lowered and key in kwargs:
            return key
    found = re.search(r"'(\w+)'", message)
    return found.group(1) if found and found.group(1) in kwargs else None


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# ----------------------------------------------------------------------------- schedules
def _cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _multistep(milestones: list[int], gamma: float):
    points = sorted(milestones)

    def factor(step: int) -> float:
        return gamma ** sum(1 for m in points if step >= m)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, total_steps: int,
                    loaded: LoadedRecipe | None = None) -> LRScheduler:
    """The schedule, stepped once per optimizer step over ``total_steps`` steps.

    All schedules keep each group's lr ratio (e.g. the amax group's multiplier). Their state dicts
    hold plain values only, so checkpoints load with ``weights_only=True``.
    """
    if spec.name == "one_cycle":
        if total_steps < 2:
            raise _error(loaded, ("qat", "schedule", "name"), "one_cycle needs at least 2 steps")
        base = optimizer.param_groups[0]["lr"]
        peak = spec.max_lr or base
        max_lrs = [peak * group["lr"] / base for group in optimizer.param_groups]
        cycle = "betas" in optimizer.defaults or bool(optimizer.defaults.get("momentum"))
        return OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps, pct_start=spec.pct_start,
                          div_factor=spec.div_factor, final_div_factor=spec.final_div_factor,
                          anneal_strategy="cos", cycle_momentum=cycle)
    if spec.name == "cosine":
        if spec.warmup_steps >= total_steps:
            raise _error(loaded, ("qat", "schedule", "warmup_steps"),
                         f"warmup_steps ({spec.warmup_steps}) must be below the number of steps ({total_steps})")
        return LambdaLR(optimizer, _cosine(spec.warmup_steps, total_steps))
    if spec.name == "multistep":
        if not spec.milestones:
            raise _error(loaded, ("qat", "schedule", "milestones"), "multistep needs milestones (steps)")
        return LambdaLR(optimizer, _multistep(spec.milestones, spec.gamma))
    return LambdaLR(optimizer, lambda step: 1.0)
