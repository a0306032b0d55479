"""Record the exact inputs exported sub-modules receive, and sparse voxel counts, from real batches.

One forward of the whole model on the first calibration batch records, through forward
pre-hooks, the positional and keyword arguments each exported module is called with (users
never write dummy inputs). For sparse exports, forward hooks on every spconv convolution
inside the exported module also record the largest number of points each layer produced
over the calibration batches (libspconv's ``output_bound``). All hooks are removed afterwards.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..quant import sparse
from ..recipe.errors import RecipeError


@dataclass
class Captured:
    """The call of one module on the first calibration batch."""

    module: str
    args: tuple
    kwargs: dict[str, Any]
    calls: int = 0  # how often the module ran during that forward


@dataclass
class CaptureResult:
    inputs: dict[str, Captured] = field(default_factory=dict)
    # exported sparse module path -> {conv path: largest output point count seen}
    point_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # exported sparse module path -> largest number of input voxels seen
    input_points: dict[str, int] = field(default_factory=dict)
    batches: int = 0


def find_module(model: nn.Module, path: str | None) -> nn.Module:
    """``model`` itself for None/"", else the sub-module at ``path`` (RecipeError with near names)."""
    if not path:
        return model
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    near = difflib.get_close_matches(path, [n for n in modules if n], n=5, cutoff=0.4)
    hint = ("did you mean: " + ", ".join(near)) if near else "use a path from model.named_modules()"
    raise RecipeError(f"export module {path!r} does not exist in the model", hint=hint)


def clone_value(value: Any) -> Any:
    """A copy of a call argument that later in-place ops of the model cannot change."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if sparse.is_sparse_tensor(value):
        copy = sparse.SparseConvTensor(value.features.detach().clone(), value.indices.clone(),
                                       list(value.spatial_shape), value.batch_size, value.grid,
                                       value.voxel_num, dict(value.indice_dict), value.benchmark)
        return copy
    if isinstance(value, (list, tuple)):
        items = [clone_value(v) for v in value]
        return type(value)(items) if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {k: clone_value(v) for k, v in value.items()}
    return value


def _count_sparse_inputs(args: tuple, kwargs: dict) -> int:
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, dict):  # a batch_dict: the voxels are one of its values
            found = _count_sparse_inputs(tuple(value.values()), {})
            if found:
                return found
            continue
        if sparse.is_sparse_tensor(value):
            return int(value.features.shape[0])
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 2:
            return int(value.shape[0])
    return 0


def capture(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, Any], Any],
            modules: list[str | None], sparse_modules: list[str | None] = (),
            count_batches: int | None = None,
            counting_context: Callable[[], contextlib.AbstractContextManager] | None = None) -> CaptureResult:
    """Run the first batch (and, for ``sparse_modules``, up to ``count_batches`` batches) through ``model``.

    ``modules`` are the paths whose inputs are recorded ("" or None: the whole model). The batches
    after the first only count points; ``counting_context`` (e.g. fake quantization switched off,
    which cannot change sparse coordinates) is entered around each of them.
    """
    result = CaptureResult()
    record_handles: list[torch.utils.hooks.RemovableHandle] = []
    count_handles: list[torch.utils.hooks.RemovableHandle] = []
    first = [True]

    def record(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not first[0]:
                return
            entry = result.inputs.get(path)
            if entry is None:
                result.inputs[path] = Captured(path, clone_value(args), clone_value(kwargs), 1)
            else:
                entry.calls += 1
        return hook

    def count_points(owner: str, conv: str):
        table = result.point_counts.setdefault(owner, {})

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if sparse.is_sparse_tensor(output):
                table[conv] = max(table.get(conv, 0), int(output.features.shape[0]))
        return hook

    def count_inputs(owner: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            result.input_points[owner] = max(result.input_points.get(owner, 0), _count_sparse_inputs(args, kwargs))
        return hook

    try:
        for path in dict.fromkeys(p or "" for p in modules):
            record_handles.append(find_module(model, path).register_forward_pre_hook(record(path), with_kwargs=True))
        for path in dict.fromkeys(p or "" for p in sparse_modules):
            owner = find_module(model, path)
            count_handles.append(owner.register_forward_pre_hook(count_inputs(path), with_kwargs=True))
            for name, module in owner.named_modules():
                if sparse.is_sparse_conv(module):
                    full = f"{path}.{name}" if path and name else (name or path)
                    count_handles.append(module.register_forward_hook(count_points(path, full)))
        limit = count_batches if sparse_modules else 1
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in itertools.islice(batches, limit) if limit else batches:
                    with counting_context() if counting_context and not first[0] else contextlib.nullcontext():
                        forward(model, batch)
                    result.batches += 1
                    if first[0]:
                        first[0] = False
                        for handle in record_handles:
                            handle.remove()
        finally:
            model.train(was_training)
    finally:
        for handle in record_handles + count_handles:
            handle.remove()
    if result.batches == 0:
        raise RecipeError("export needs calibration data to capture module inputs, and it is empty")
    for path in dict.fromkeys(p or "" for p in modules):
        if path not in result.inputs:
            raise RecipeError(f"export module {path!r} never ran during the forward of a calibration batch",
                              hint="export a module that the model's forward calls")
    return result
