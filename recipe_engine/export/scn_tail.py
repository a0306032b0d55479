"""The dense tail of an ``onnx-sparse`` output: ScatterDense -> [Transpose] -> [Reshape].

:func:`plan_output` finds, for one traced output, the tail that reproduces the PyTorch module's own
arrangement (``exact``), or the closest one libspconv can express after a layout conversion, or the
one a compatibility profile's application reads (:mod:`.scn_compat`). A tail that is not exact is
compared with PyTorch in the file's arrangement (see :func:`.runner.expected_outputs`), from the
scatter's dense tensor that :func:`scatter_dense` recovers from the module's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..recipe.errors import RecipeError
from .scn_compat import TRANSPOSE_DIMS, Profile, expected_dims
from .sparse_trace import Op, SparseTrace

REVERSE = [0, 1, 4, 3, 2]  # N, C, a, b, c -> N, C, c, b, a


@dataclass
class OutputPlan:
    """How one graph output is made from a scatter: Transpose ``perm`` (or None), Reshape ``dims`` (or None)."""

    scatter: int  # value index of the scatter op output
    perm: list[int] | None
    dims: list[int] | None
    exact: bool  # equals the PyTorch module's output (else the spatial axes are in the runtime's order)
    axes: list[str]


def plan_output(trace: SparseTrace, value: int, layout: str, convert: bool,
                profile: Profile | None = None) -> OutputPlan:
    """The ScatterDense -> [Transpose] -> [Reshape] tail that reproduces output ``value`` (or ``profile``'s)."""
    producer = {op.output: op for op in trace.ops}
    chain: list[Op] = []
    current = producer[value]
    while current.kind != "scatter":
        chain.append(current)
        current = producer[current.inputs[0]]
    chain.reverse()
    scatter = current
    axes = ["N", "s0", "s1", "s2", "C"]  # the channels-last scatter inside SparseConvTensor.dense()
    model_shape = list(trace.values[scatter.output].shape)
    reshape: list[int] | None = None
    for op in chain:
        if op.kind == "permute":
            if reshape is not None:
                raise RecipeError("onnx-sparse: a permute after a reshape of the dense output cannot be expressed")
            axes = [axes[p] for p in op.info["perm"]]
            model_shape = list(trace.values[op.output].shape)
        elif op.kind == "reshape":
            reshape = list(op.info["shape"])
    if axes[:2] != ["N", "C"]:
        raise RecipeError(f"onnx-sparse: the dense output has axes {axes}; ScatterDense writes channels first "
                          "(use SparseConvTensor.dense() with channels_first=True)")
    spatial = ["s0", "s1", "s2"] if not convert else ["s2", "s1", "s0"]
    file_axes = ["N", "C", *spatial]
    if profile is not None:
        return _profile_output(trace, scatter, file_axes, axes, reshape, layout, profile)
    allowed = TRANSPOSE_DIMS[layout]
    candidates = [(None, file_axes), (allowed, [file_axes[p] for p in allowed])]
    exact = next(((p, a) for p, a in candidates if a == axes), None)
    if exact is None and not convert:
        raise RecipeError(f"onnx-sparse: the model arranges its dense output as {axes}; after a {layout!r} "
                          f"ScatterDense libspconv can only produce {candidates[0][1]} or {candidates[1][1]}")
    # converting layouts may make the model's arrangement inexpressible: take the closest candidate, keeping the
    # axis that follows C (it merges with C in BEV reshapes), and let verification compare in that arrangement
    chosen = exact or max(candidates, key=lambda c: (c[1][2] == axes[2],
                                                     sum(x == y for x, y in zip(c[1], axes, strict=True))))
    out_shape = _axes_shape(scatter, chosen[1])
    dims = None
    if reshape is not None:
        batch = trace.values[scatter.output].shape[0]
        if reshape[0] != batch:
            raise RecipeError(f"onnx-sparse: the dense output is reshaped to {reshape}, which changes the batch axis")
        if exact is not None:
            dims = [1, *reshape[1:]]
        else:
            dims = [1, *_merge_like(model_shape, reshape, out_shape)[1:]]
    return OutputPlan(scatter.output, chosen[0], dims, exact is not None, chosen[1])


def scatter_dense(trace: SparseTrace, position: int) -> torch.Tensor:
    """The channels-first dense tensor ``[N, C, s0, s1, s2]`` of the scatter behind output ``position``.

    A view of ``trace.output_tensors[position]`` with its permutes and reshapes undone (they are the
    only ops the tracer allows after a scatter), so the trace keeps no copy of the scatter.
    """
    producer = {op.output: op for op in trace.ops}
    dense = trace.output_tensors[position]
    current = producer[trace.outputs[position]]
    while current.kind != "scatter":
        source = current.inputs[0]
        if current.kind == "reshape":
            dense = dense.reshape(trace.values[source].shape)
        else:  # permute
            dense = dense.permute(*np.argsort(current.info["perm"]).tolist())
        current = producer[source]
    return dense.permute(0, 4, 1, 2, 3)


def _profile_output(trace: SparseTrace, scatter: Op, file_axes: list[str], model_axes: list[str],
                    model_reshape: list[int] | None, layout: str, profile: Profile) -> OutputPlan:
    """The tail ``profile``'s application reads; ``exact`` when the model's output is arranged the same way."""
    perm, dims = expected_dims(profile, layout, _axes_shape(scatter, file_axes))
    axes = [file_axes[p] for p in perm] if perm else file_axes
    batch = trace.values[scatter.output].shape[0]
    exact = axes == model_axes and model_reshape is not None and list(model_reshape) == [batch, *dims[1:]]
    return OutputPlan(scatter.output, perm, dims, exact, axes)


def _axes_shape(scatter: Op, axes: list[str]) -> list[int]:
    info = scatter.info
    sizes = {"N": info["batch_size"], "C": info["channels"]}
    for i, size in enumerate(info["spatial_shape"]):
        sizes[f"s{i}"] = size
    return [sizes[a] for a in axes]


def _merge_like(model_shape: list[int], reshape: list[int], file_shape: list[int]) -> list[int]:
    """Apply the model's reshape (a merge of adjacent axes) to the file's axis sizes."""
    groups: list[list[int]] = []
    axis = 0
    for size in reshape:
        group, product = [], 1
        while axis < len(model_shape) and (product < size or not group):
            product *= model_shape[axis]
            group.append(axis)
            axis += 1
        while axis < len(model_shape) and model_shape[axis] == 1 and product == size and size != 1:
            group.append(axis)
            axis += 1
        if product != size:
            raise RecipeError(f"onnx-sparse: reshape {model_shape} -> {reshape} is not a merge of adjacent axes; "
                              "it cannot be carried over to another layout")
        groups.append(group)
    return [int(np.prod([file_shape[a] for a in g])) for g in groups]
