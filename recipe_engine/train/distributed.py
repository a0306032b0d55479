"""torch.distributed support: torchrun environments, data shards, calibration statistics across ranks.

Everything here is a no-op in a single process, so callers need no ``if distributed`` branches:
``rank()`` is 0, ``shard(x)`` is ``x``, ``merge_statistics`` returns its input.

Calibration under torchrun: every rank calibrates a disjoint shard of the calibration batches and
``merge_statistics`` (called by the calibration loop before amax is computed) combines the
statistics: the maximum for max calibrators, histograms merged bin by bin (``merge_histograms``)
for histogram calibrators. A histogram calibrator's bin width is set by the first batch it sees, so
ranks other than 0 first run the global first batch and discard its counts (``calibration_shard``):
all ranks then bin on the same grid and the merged histogram is the one a single process builds.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..recipe.errors import RecipeError

TIMEOUT = timedelta(minutes=30)


# ----------------------------------------------------------------------------- environment
def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the only process that writes files and logs.

    Outside an initialized process group, torchrun's RANK variable decides.
    """
    return rank() == 0 if is_distributed() else int(os.environ.get("RANK", "0")) == 0


def init_from_env() -> bool:
    """Join the torchrun process group (nccl with CUDA, else gloo). True if this call created it."""
    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return True


def shutdown(created: bool) -> None:
    """Leave the process group if ``init_from_env`` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """This rank's device: its CUDA device when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0)
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order (``[value]`` in a single process)."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_true(flag: bool) -> bool:
    """True on every rank iff ``flag`` is true on every rank (ranks stop iterating together)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1 if flag else 0], device=device() if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``model``."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=src)


# ----------------------------------------------------------------------------- data shards
def _is_sequence(data: Any) -> bool:
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, dict)


def shard_length(data: Any, ranks: int | None = None) -> int | None:
    """Batches per rank in one pass over ``data`` (equal on every rank), or None if unsized."""
    if not hasattr(data, "__len__"):
        return None
    return len(data) // (ranks or world_size())


def shard(data: Iterable, start: int = 0, *, rank_: int | None = None, ranks: int | None = None) -> Iterator:
    """This rank's batches of one pass over ``data``, from this rank's ``start``-th batch on.

    Sized data is split into equal strided shards (rank r takes batches r, r + N, ...; the
    remainder that would make shards unequal is dropped, like DistributedSampler). Sequences are
    indexed directly, so skipping to ``start`` fetches nothing; other iterables are consumed.
    """
    r = rank() if rank_ is None else rank_
    n = world_size() if ranks is None else ranks
    length = shard_length(data, n)
    if length is not None and _is_sequence(data):
        return (data[r + n * i] for i in range(start, length))
    items = iter(data)
    if n > 1 or length is not None:
        stop = None if length is None else length * n
        items = itertools.islice(items, r, stop, n)
    return _skip(items, start)


_END = object()


def _skip(items: Iterator, count: int) -> Iterator:
    for _ in range(count):
        if next(items, _END) is _END:
            break
    return items


def calibration_shard(model: nn.Module, batches: Iterable, limit: int | None,
                      forward: Callable[[nn.Module, Any], Any]) -> Iterable:
    """This rank's calibration batches (the first ``limit`` batches, split over ranks).

    In a single process ``batches`` is returned unchanged. Under torchrun, ranks other than 0 first
    run the global first batch through the model to fix their histogram grids, then drop its counts.
    """
    if not is_distributed():
        return batches
    from ..calib.collect import collect_statistics
    from ..quant import backend
    from ..quant.apply import get_state

    selected = list(itertools.islice(batches, limit) if limit else batches)
    if len(selected) < world_size():
        raise RecipeError(f"calibration has {len(selected)} batches for {world_size()} ranks",
                          hint="give every rank at least one batch: raise calibration.batches or use fewer ranks")
    mine = selected[rank()::world_size()]
    if rank() != 0:
        state = get_state(model)
        histograms = [q for _, q in state.unique()
                      if backend.is_histogram(q) and not state.is_fixed(q)]
        if histograms:
            collect_statistics(model, state, selected[:1], forward, show_progress=False)
            for quantizer in histograms:
                stats = backend.calibration_statistics(quantizer)
                if stats is not None:
                    backend.load_calibration_statistics(quantizer, {**stats, "hist": torch.zeros_like(stats["hist"])})
    return mine


# ----------------------------------------------------------------------------- statistics
def merge_rank_statistics(parts: Sequence[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
    """Combine one quantizer's statistics from several ranks (rank order; None for a rank that saw nothing)."""
    from ..calib.merge import merge_histograms

    present = [p for p in parts if p is not None]
    if not present:
        return None
    if "amax" in present[0]:
        shapes = {tuple(p["amax"].shape) for p in present}
        if len(shapes) > 1:
            raise RecipeError(f"ranks collected amax of different shapes {sorted(shapes)}")
        return {"amax": torch.stack([p["amax"].float() for p in present]).amax(0).to(present[0]["amax"].dtype)}
    hist, edges = merge_histograms([(p["hist"], p["edges"]) for p in present])
    return {"hist": torch.as_tensor(hist).float(), "edges": torch.as_tensor(edges).float()}


def merge_statistics(state: Any, count: int) -> int:
    """Merge every calibrator's statistics across ranks in place; returns the total batch count.

    Called by the calibration loop after collecting and before computing amax. Max calibrators get
    the maximum over ranks; histogram calibrators the merged histogram. No-op in a single process.
    """
    if not is_distributed():
        return count
    from ..quant import backend

    quantizers = [q for _, q in state.unique() if not state.is_fixed(q)]
    local = [backend.calibration_statistics(q) for q in quantizers]
    gathered = all_gather_object((count, [None if s is None else {k: v.cpu() for k, v in s.items()} for s in local]))
    for index, quantizer in enumerate(quantizers):
        merged = merge_rank_statistics([stats[index] for _, stats in gathered])
        if merged is not None:
            where = next(iter(local[index].values())).device if local[index] else torch.device("cpu")
            backend.load_calibration_statistics(quantizer, {k: v.to(where) for k, v in merged.items()})
    return sum(c for c, _ in gathered)


# ----------------------------------------------------------------------------- models
def wrap(model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` under torchrun; ``model`` itself otherwise."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device().index] if device().type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


# ----------------------------------------------------------------------------- launching
def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command that runs ``recipe ARGS`` on ``nproc`` local ranks under torchrun (see ``launch.py``)."""
    from .launch import torchrun_command as command

    return command(nproc, args)


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``recipe ARGS`` under torchrun with ``nproc`` processes; returns its exit code (0 or 1).

    A failure prints one line per failed rank and the error of the rank that failed first.
    """
    if nproc < 1:
        raise RecipeError(f"--nproc must be >= 1, got {nproc}")
    from .launch import launch as run_ranks

    return run_ranks(nproc, args)
