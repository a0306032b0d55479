"""Per-group quantization sensitivity, and the greedy search that both ``recipe sensitivity`` and
``tune:`` use to pick which groups to run in full precision.

A *group* is what must be switched together: a module's input+weight quantizers, an op site,
and everything tied by a share group (one quantizer object). Calibration runs once; groups are
then toggled. The metric is the recipe's ``data.evaluate`` on the validation data or, when the
recipe has none, output fidelity: the SQNR (dB) of the model output vs FP32 on calibration data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import data as data_mod
from ..quant import backend
from ..quant.apply import QuantState, get_state
from ..util.progress import progress
from .fidelity import sqnr_db

FIDELITY_METRIC = "output_sqnr_db"


@dataclass
class Group:
    """Quantizers switched together, named after their owner module (or the op site)."""

    name: str
    quantizer_names: list[str]
    quantizers: list[Any] = field(repr=False, default_factory=list)


def quantizer_groups(state: QuantState) -> list[Group]:
    """Groups in model order: a module's input+weight together, op sites alone, shared scales merged."""
    by_label: dict[str, list[str]] = {}
    for name in state.quantizers:
        by_label.setdefault(_label(state, name), []).append(name)
    merged: list[tuple[list[str], list[str], set[int]]] = []  # (labels, quantizer names, object ids)
    for label, names in by_label.items():
        ids = {id(state.quantizers[n]) for n in names}
        overlapping = [m for m in merged if m[2] & ids]
        labels, members = [label], list(names)
        for other in overlapping:
            merged.remove(other)
            labels, members, ids = other[0] + labels, other[1] + members, other[2] | ids
        merged.append((labels, members, ids))
    groups = []
    for labels, members, _ in merged:
        unique: dict[int, Any] = {id(state.quantizers[n]): state.quantizers[n] for n in members}
        groups.append(Group(" + ".join(labels), members, list(unique.values())))
    return groups


def _label(state: QuantState, name: str) -> str:
    """A module's input/weight quantizers are labelled by the module; op sites by their own name."""
    owner = state.owners[name]
    leaf = name[len(owner) + 1:] if owner else name
    return owner if leaf in ("input", "weight") else name


class Scorer:
    """Evaluates the model in its current quantizer configuration (one number, higher is better)."""

    def __init__(self, model: nn.Module, evaluate: Callable | None, val_batches: Any, calib_batches: Iterable,
                 forward: Callable, metric: str | None = None, fidelity_batches: int = 2):
        self.model = model
        self.evaluate = evaluate
        self.val_batches = val_batches
        self.forward = forward
        self.calls = 0
        if evaluate is None:
            self.metric = FIDELITY_METRIC
            self.batches = [b for _, b in zip(range(fidelity_batches), calib_batches, strict=False)]
            with all_quantizers_off(model):
                self.reference = [self._outputs(b) for b in self.batches]
        else:
            self.metric = metric
            self.batches = []

    def _outputs(self, batch: Any) -> torch.Tensor:
        with torch.no_grad():
            output = self.forward(self.model, batch)
        return _flatten(output)

    def __call__(self) -> float:
        self.calls += 1
        if self.evaluate is None:
            approx = torch.cat([self._outputs(b) for b in self.batches])
            return sqnr_db(torch.cat(self.reference), approx)
        result = data_mod.run_evaluate(self.evaluate, self.model, self.val_batches)
        if self.metric is None:
            self.metric = next(iter(result))
        if self.metric not in result:
            from ..recipe.errors import RecipeError

            raise RecipeError(f"metric {self.metric!r} is not in the evaluate() result {sorted(result)}")
        return result[self.metric]


def _flatten(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output.detach().flatten().double()
    if isinstance(output, dict):
        return torch.cat([_flatten(v) for _, v in sorted(output.items())])
    if isinstance(output, (list, tuple)):
        return torch.cat([_flatten(v) for v in output])
    return torch.tensor([float(output)], dtype=torch.float64)


class all_quantizers_off:
    """Context manager: every quantizer disabled, previous states restored afterwards."""

    def __init__(self, model: nn.Module):
        self.state = get_state(model)

    def __enter__(self) -> None:
        self.saved = [(q, backend.is_enabled(q)) for _, q in self.state.unique()]
        for quantizer, _ in self.saved:
            backend.set_enabled(quantizer, False)

    def __exit__(self, *exc: object) -> None:
        for quantizer, enabled in self.saved:
            backend.set_enabled(quantizer, enabled)


def set_groups(groups: list[Group], enabled: Callable[[Group], bool]) -> None:
    for group in groups:
        for quantizer in group.quantizers:
            backend.set_enabled(quantizer, enabled(group))


@dataclass
class SensitivityRow:
    group: str
    quantizers: list[str]
    only_this: float  # metric with only this group quantized
    all_but_this: float  # metric with every group but this one quantized
    gain_if_disabled: float  # all_but_this - all_int8 (higher: more sensitive)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SensitivityResult:
    metric: str
    fp32: float
    int8: float
    rows: list[SensitivityRow]
    evaluations: int
    seconds: float

    def ranked(self) -> list[SensitivityRow]:
        return sorted(self.rows, key=lambda r: (-r.gain_if_disabled, r.only_this))


def enabled_groups(state: QuantState) -> list[Group]:
    """Groups whose quantizers are all enabled (the recipe's `disable` list stays off)."""
    return [g for g in quantizer_groups(state) if all(backend.is_enabled(q) for q in g.quantizers)]


def profile(model: nn.Module, scorer: Scorer, groups: list[Group], show_progress: bool = True) -> SensitivityResult:
    """Measure every group alone and left out (the model's quantizers are restored afterwards)."""
    start = time.perf_counter()
    saved = [(q, backend.is_enabled(q)) for _, q in get_state(model).unique()]
    try:
        set_groups(groups, lambda g: False)
        fp32 = scorer()
        set_groups(groups, lambda g: True)
        int8 = scorer()
        rows = []
        for group in progress(groups, total=len(groups), description="sensitivity", enabled=show_progress):
            set_groups(groups, lambda g, target=group: g is target)
            only = scorer()
            set_groups(groups, lambda g, target=group: g is not target)
            but = scorer()
            rows.append(SensitivityRow(group.name, group.quantizer_names, only, but, but - int8))
    finally:
        for quantizer, enabled in saved:
            backend.set_enabled(quantizer, enabled)
    return SensitivityResult(scorer.metric or "metric", fp32, int8, rows, scorer.calls, time.perf_counter() - start)


@dataclass
class GreedyStep:
    disabled: list[str]
    metric: float

    def as_dict(self) -> dict:
        return {"disabled": list(self.disabled), "metric": self.metric}


def greedy_disable(scorer: Scorer, groups: list[Group], order: list[str], target: float,
                   budget: int) -> tuple[list[str], list[GreedyStep], bool]:
    """Disable groups in ``order`` until the metric reaches ``target`` or ``budget`` evaluations are spent.

    Starts from every group enabled. Returns (disabled group names, the steps tried, success);
    success only when the last *measured* metric is >= target.
    """
    by_name = {g.name: g for g in groups}
    disabled: list[str] = []
    set_groups(groups, lambda g: True)
    metric = scorer()
    steps = [GreedyStep([], metric)]
    for name in order:
        if metric >= target or len(steps) >= budget:
            break
        disabled.append(name)
        for quantizer in by_name[name].quantizers:
            backend.set_enabled(quantizer, False)
        metric = scorer()
        steps.append(GreedyStep(list(disabled), metric))
    return disabled, steps, bool(metric >= target)
