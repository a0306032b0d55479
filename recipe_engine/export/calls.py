"""Exported calls with plain tensors in and out, for modules that take or return dicts.

OpenPCDet and mmdet3d modules pass one ``batch_dict`` between them. An export entry names the
tensors the file takes and gives (without touching the model's code)::

    inputs: {voxel_features: batch_dict.voxel_features, voxel_coords: batch_dict.voxel_coords}
    outputs: [spatial_features]

An input path starts with a parameter name of the module's ``forward`` and continues with dict
keys or list positions (``batch_dict.voxel_features``, ``feats.0``); the key of the mapping is
the file's input name. An output path walks the returned value the same way (``spatial_features``
is key ``spatial_features`` of a returned dict, ``0`` the first item of a returned tuple) and is
also the output's name. :class:`TensorCall` wraps the module: its ``forward`` takes the named
tensors positionally, puts them into a copy of the captured call (every other value, ints and
flags, stays as captured) and returns the named outputs as a tuple, so ONNX sees plain tensors.
A dict read by the module during the wrapped call records which keys it read: a tensor read but
not named in ``inputs`` would be frozen into the file as a constant, and is an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..quant import sparse
from ..recipe.errors import RecipeError


class MappingError(RecipeError):
    """A wrong ``inputs``/``outputs`` mapping; ``entry_key`` is the export entry's key it is about."""

    def __init__(self, entry_key: str, message: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.entry_key = entry_key


class _ReadLog(dict):
    """A dict that remembers the keys read from it (``[]``, ``get``)."""

    def __init__(self, data: Mapping, path: str, log: set[str]):
        super().__init__(data)
        self._path, self._log = path, log

    def __getitem__(self, key: Any) -> Any:
        self._log.add(f"{self._path}.{key}")
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self._log.add(f"{self._path}.{key}")
        return super().get(key, default)


def _step(value: Any, part: str, where: str) -> Any:
    if isinstance(value, Mapping):
        if part in value:
            return value[part]
        raise KeyError(f"{where} has no key {part!r} (keys: {', '.join(map(str, value))})")
    if isinstance(value, (list, tuple)) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
        return value[int(part)]
    raise KeyError(f"{where} is a {type(value).__name__}; {part!r} does not index it")


def resolve(root: Any, path: str, what: str) -> Any:
    """The value at dotted ``path`` inside ``root`` (a dict of parameters or an output)."""
    value, where = root, what
    for part in path.split("."):
        value = _step(value, part, where)
        where = f"{where}.{part}" if where != what else part
    return value


def _copy_into(value: Any, path: str, replace: dict[str, torch.Tensor], log: set[str] | None) -> Any:
    """A copy of the dict/list structure of ``value`` with the tensors at ``replace``'s paths swapped in."""
    if path in replace:
        return replace[path]
    if isinstance(value, Mapping):
        copied = {k: _copy_into(v, f"{path}.{k}", replace, log) for k, v in value.items()}
        return _ReadLog(copied, path, log) if log is not None else copied
    if isinstance(value, (list, tuple)):
        items = [_copy_into(v, f"{path}.{i}", replace, log) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def tensor_paths(value: Any, path: str) -> list[str]:
    """Dotted paths of the tensors inside dicts of ``value`` (what a mapping could name)."""
    if isinstance(value, torch.Tensor) or sparse.is_sparse_tensor(value):
        return [path]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in tensor_paths(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in tensor_paths(v, f"{path}.{i}")]
    return []


def has_dict(value: Any) -> bool:
    if isinstance(value, Mapping):
        return True
    if isinstance(value, (list, tuple)):
        return any(has_dict(v) for v in value)
    return False


def bind(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The captured call as {parameter name: value} of ``module.forward``."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except TypeError as exc:
        raise RecipeError(f"the captured inputs do not match {type(module).__name__}.forward: {exc}") from None
    return dict(bound.arguments)


def call_logging_reads(module: nn.Module, args: tuple, kwargs: dict) -> tuple[dict[str, Any], Any, set[str]]:
    """Call ``module`` on a copy of its captured call whose dicts log the keys read.

    Returns (the call as {parameter: value}, the result, the dotted paths read); what the module
    writes into a dict goes into the copy, not into the captured call.
    """
    arguments = bind(module, args, kwargs)
    reads: set[str] = set()
    bound = inspect.signature(module.forward).bind_partial()
    bound.arguments.update({k: _copy_into(v, k, {}, reads) for k, v in arguments.items()})
    return arguments, module(*bound.args, **bound.kwargs), reads


class TensorCall(nn.Module):
    """``module`` called with named tensors put into its captured call; named outputs as a tuple."""

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict, inputs: Mapping[str, str],
                 outputs: Sequence[str]):
        super().__init__()
        self.module = module
        self.arguments = bind(module, args, kwargs)
        self.signature = inspect.signature(module.forward)
        self.onnx_input_names = list(inputs)
        self.onnx_output_names = list(outputs)
        self.input_paths = dict(inputs)
        self.reads: set[str] = set()
        self.tensors = []
        for name, path in self.input_paths.items():
            try:
                tensor = resolve(self.arguments, path, "the call")
            except KeyError as exc:
                raise MappingError("inputs", f"inputs.{name}: {path!r}: {exc.args[0]}", hint=self.input_hint()) \
                    from None
            if not isinstance(tensor, torch.Tensor):
                raise MappingError("inputs", f"inputs.{name}: {path!r} is a {type(tensor).__name__}, not a tensor",
                                   hint=self.input_hint())
            self.tensors.append(tensor)

    def input_hint(self) -> str:
        paths = [p for name, v in self.arguments.items() for p in tensor_paths(v, name)]
        return "tensors of the captured call: " + ", ".join(paths[:12]) + (" ..." if len(paths) > 12 else "")

    def call_arguments(self, tensors: Sequence[torch.Tensor]) -> tuple[tuple, dict]:
        replace = dict(zip(self.input_paths.values(), tensors, strict=True))
        values = {k: _copy_into(v, k, replace, self.reads) for k, v in self.arguments.items()}
        bound = self.signature.bind_partial()
        bound.arguments.update(values)
        return tuple(bound.args), dict(bound.kwargs)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args, kwargs = self.call_arguments(tensors)
        result = self.module(*args, **kwargs)
        picked = []
        for path in self.onnx_output_names:
            try:
                picked.append(resolve(result, path, "the output"))
            except KeyError as exc:
                raise MappingError("outputs", f"outputs: {path!r}: {exc.args[0]}", hint=output_hint(result)) from None
        return tuple(picked)

    def unnamed_reads(self) -> list[str]:
        """Tensors the module read from a dict of its call that ``inputs`` does not name."""
        named = set(self.input_paths.values())
        unnamed = []
        for path in sorted(self.reads):
            try:
                value = resolve(self.arguments, path, "the call")
            except KeyError:
                continue  # a key the module itself wrote, then read
            if isinstance(value, torch.Tensor) and path not in named:
                unnamed.append(path)
        return unnamed


def output_hint(result: Any) -> str:
    paths = tensor_paths(result, "")
    return "tensors of the output: " + ", ".join(p.lstrip(".") for p in paths[:12]) if paths else \
        "the module returns no tensor"


def wrap_call(module: nn.Module, args: tuple, kwargs: dict, entry: Any) -> tuple[nn.Module, tuple, dict]:
    """(the module to export, its args, kwargs): ``module`` itself, or a TensorCall when the entry maps I/O."""
    if not entry.inputs and not entry.outputs:
        if has_dict((args, tuple(kwargs.values()))):
            arguments = bind(module, args, kwargs)
            paths = [p for name, v in arguments.items() for p in tensor_paths(v, name)]
            example = ", ".join(f"{p.rsplit('.', 1)[-1]}: {p}" for p in paths[:3])
            raise RecipeError(f"{type(module).__name__}.forward takes a dict; ONNX needs tensors",
                              hint=f"name the tensors it reads in the export entry, e.g. inputs: {{{example}}}, "
                              "and the tensors it gives: outputs: [KEY, ...]")
        return module, args, kwargs
    if not entry.inputs or not entry.outputs:
        raise MappingError("inputs" if not entry.inputs else "outputs",
                           "`inputs` and `outputs` go together: name both the tensors the file takes and gives")
    wrapper = TensorCall(module, args, kwargs, entry.inputs, entry.outputs)
    return wrapper, tuple(wrapper.tensors), {}


def check_reads(wrapper: nn.Module) -> None:
    """After one wrapped call: every tensor the module read must be an input of the file."""
    if isinstance(wrapper, TensorCall):
        unnamed = wrapper.unnamed_reads()
        if unnamed:
            raise MappingError("inputs", f"the module reads {', '.join(unnamed)}, which `inputs` does not name (it "
                               "would be frozen into the file as a constant)",
                               hint="add " + ", ".join(f"{p.rsplit('.', 1)[-1]}: {p}" for p in unnamed) + " to inputs")
