"""``inputs:``/``outputs:`` of drafted exports whose module takes a dict (OpenPCDet's / mmdet3d's batch_dict).

An export of such a module must name the tensors the file takes and gives
(:mod:`recipe_engine.export.calls`). The draft finds them as a user would: it records the
module's call on the traced batch, runs the module once more on a copy of that call whose dicts
log the keys read, and takes

- as inputs, the tensors of the call the module read (top-level tensor parameters always), in
  the order of the call; the input name is the last key (``batch_dict.voxel_features`` ->
  ``voxel_features``), the whole path with ``_`` when two would clash;
- as outputs, the tensors of the returned dict (or tuple) that were not in the call: the keys the
  module wrote (``spatial_features``).

Sparse tensors are left to the export pre-check, which explains what the format needs; a module
that returns a bare tensor from a dict gets no mapping (the pre-check then says so).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..export.calls import call_logging_reads, has_dict, resolve, tensor_paths
from ..export.capture import capture
from ..quant import sparse
from .entries import Entry


def _tensor_ids(value: Any) -> set[int]:
    if isinstance(value, torch.Tensor) or sparse.is_sparse_tensor(value):
        return {id(value)}
    if isinstance(value, Mapping):
        return set().union(*(_tensor_ids(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_tensor_ids(v) for v in value)) if value else set()
    return set()


def _names(paths: list[str]) -> dict[str, str]:
    """{input name: path}: the last key, or the whole path with ``_`` where last keys clash."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {(name if last.count(name) == 1 else path.replace(".", "_")): path
            for name, path in zip(last, paths, strict=True)}


def infer_mapping(module: nn.Module, args: tuple, kwargs: dict) -> tuple[dict[str, str], list[str]] | None:
    """(inputs, outputs) for a module whose call holds a dict, or None (no dict, or nothing to name)."""
    if not has_dict((args, tuple(kwargs.values()))):
        return None
    with torch.no_grad():
        arguments, result, reads = call_logging_reads(module, args, kwargs)
    candidates = [p for name, v in arguments.items() for p in tensor_paths(v, name)]
    inputs = [p for p in candidates
              if isinstance(resolve(arguments, p, "the call"), torch.Tensor)
              and ("." not in p or p in reads or any(p.startswith(r + ".") for r in reads))]
    if isinstance(result, torch.Tensor) or not inputs:
        return None
    seen = _tensor_ids(arguments)
    outputs = [p.lstrip(".") for p in tensor_paths(result, "")
               if id(resolve(result, p.lstrip("."), "the output")) not in seen]
    if not outputs:
        return None
    return _names(inputs), outputs


def add_dict_io(entries: list[Entry], model: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any]) -> None:
    """Give each drafted export of a dict-taking module its ``inputs``/``outputs`` (in place)."""
    exports = [e for e in entries if isinstance(e.value, dict) and e.value.get("module")
               and e.value.get("format") in ("onnx-qdq", "onnx-sparse")]
    if not exports:
        return
    paths = [e.value["module"] for e in exports]
    captured = capture(model, [batch], forward, paths)
    for entry in exports:
        call = captured.inputs.get(entry.value["module"])
        if call is None:
            continue
        module = model.get_submodule(entry.value["module"])
        try:
            mapping = infer_mapping(module, call.args, call.kwargs)
        except Exception:  # noqa: BLE001 - a best-effort guess: the export pre-check reports what is wrong
            mapping = None
        if mapping is None:
            continue
        inputs, outputs = mapping
        entry.value = {**entry.value, "inputs": inputs, "outputs": outputs}
        entry.why.append(f"{type(module).__name__}.forward takes a dict: the file takes the tensors it read "
                         f"({', '.join(inputs.values())}) and gives the ones it wrote ({', '.join(outputs)})")


__all__ = ["add_dict_io", "infer_mapping"]
