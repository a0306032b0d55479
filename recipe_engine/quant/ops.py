"""Op-input quantization: quantize the inputs of ``+`` and ``torch.cat`` inside a module's forward.

No model source is edited and nothing global is patched: while a selected module's own
forward runs, a :class:`torch.overrides.TorchFunctionMode` is active (pushed by a forward
pre-hook, popped by a forward hook that also runs on exceptions). It intercepts
``Tensor.add``/``__add__``/``__radd__``/``__iadd__``/``add_``, ``torch.add`` and
``torch.cat`` with at least two tensor operands, *only* when they execute directly in that
module's forward (not inside one of its child modules: hooks on the children keep a depth
count, and the mode is popped while a child runs, so a child's own torch calls cost nothing:
spconv's CPU convolution makes ~40 torch calls per kernel offset, 16k per zoo CenterPoint
batch, all of them intercepted before). One mode per thread serves every owner: it hands an op
to the innermost running owner. All inputs of one op site go through one quantizer (TensorRT wants one scale per
add/concat). Sites are numbered per kind in execution order and named
``<module path>.add0``, ``<module path>.cat1`` ...; they are found by one discovery
forward before quantizers are created.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .backend import Quantizer

OP_KINDS = {
    "add": {"add", "add_", "__add__", "__radd__", "__iadd__"},
    "cat": {"cat", "concat", "concatenate"},
}
_KIND_OF = {name: kind for kind, names in OP_KINDS.items() for name in names}
SITES_ATTR = "_recipe_op_quantizers"


def _is_float_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


@dataclass
class _Frame:
    """One running forward of an owner: its child depth and per-kind site counters."""

    hooks: OpSiteHooks
    depth: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    child_handles: list = field(default_factory=list)


class _DirectOpMode(TorchFunctionMode):
    """Routes the add/cat calls made directly in the innermost running owner's forward to its op-site hooks."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _KIND_OF.get(getattr(func, "__name__", ""))
        frames = _RUNNING.frames
        if kind is None or not frames or frames[-1].depth != 0 or kind not in frames[-1].hooks.kinds:
            return func(*args, **kwargs)
        if kind == "add":
            if len(args) < 2 or not (_is_float_tensor(args[0]) and _is_float_tensor(args[1])):
                return func(*args, **kwargs)
        else:
            tensors = args[0] if args else kwargs.get("tensors")
            if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 or \
                    not all(_is_float_tensor(t) for t in tensors):
                return func(*args, **kwargs)
        frame = frames[-1]
        index = frame.counters.get(kind, 0)
        frame.counters[kind] = index + 1
        return frame.hooks.call(f"{kind}{index}", kind, func, args, kwargs)


class _Running(threading.local):
    """Per thread: the owner forwards running (innermost last) and the one mode, while it is pushed."""

    def __init__(self) -> None:
        self.frames: list[_Frame] = []
        self.mode = _DirectOpMode()
        self.pushed = False


_RUNNING = _Running()


def _sync_mode() -> None:
    """Push the mode while the innermost running owner executes its own code, pop it while one of its children
    runs (so a child's torch calls, e.g. spconv's per-offset gather/mm/scatter loop, are not intercepted).

    The decision depends only on the state, so the order in which the hooks of a module that is both an owner
    and another owner's child run does not matter. The mode is only popped from the top of torch's mode stack;
    below another mode it stays pushed and passes calls through (the depth check), as before."""
    running = _RUNNING
    want = bool(running.frames) and running.frames[-1].depth == 0
    if want and not running.pushed:
        torch._C._push_on_torch_function_stack(running.mode)
        running.pushed = True
    elif not want and running.pushed:
        size = torch._C._len_torch_function_stack()
        if size and torch._C._get_function_stack_at(size - 1) is running.mode:
            torch._C._pop_torch_function_stack()
            running.pushed = False


class OpSiteQuantizers(nn.ModuleDict):
    """The quantizers of one module's op sites, stored as a child of that module.

    It is an identity when called, so an owner that is itself a container (nn.Sequential,
    spconv's SparseSequential: their forward calls every child in turn) keeps working.
    """

    def forward(self, value):
        return value


class OpSiteHooks:
    """The hooks that make one module's direct add/cat ops quantizable."""

    def __init__(self, owner: nn.Module, kinds: set[str]):
        self.owner = owner
        self.kinds = set(kinds)
        self.discovered: list[str] | None = None  # list while discovering
        self._frames: list[_Frame] = []
        self._warned: set[str] = set()
        self.handles = [
            owner.register_forward_pre_hook(self._enter),
            owner.register_forward_hook(self._leave, always_call=True),
        ]

    # -- lifecycle -------------------------------------------------------------------
    def _enter(self, module: nn.Module, args) -> None:
        frame = _Frame(self)
        for child in module.children():
            frame.child_handles.append(child.register_forward_pre_hook(lambda *_: self._depth(frame, +1)))
            frame.child_handles.append(child.register_forward_hook(lambda *_: self._depth(frame, -1),
                                                                   always_call=True))
        self._frames.append(frame)
        _RUNNING.frames.append(frame)
        _sync_mode()

    def _leave(self, module: nn.Module, args, output) -> None:
        if not self._frames:
            return
        frame = self._frames.pop()
        running = _RUNNING.frames
        if frame in running:  # innermost normally; on an exception unwinding several owners, still this one
            running.remove(frame)
        for handle in frame.child_handles:
            handle.remove()
        _sync_mode()

    @staticmethod
    def _depth(frame: _Frame, delta: int) -> None:
        frame.depth += delta
        _sync_mode()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    # -- the op itself -------------------------------------------------------------------
    def quantizers(self) -> nn.ModuleDict:
        found = getattr(self.owner, SITES_ATTR, None)
        if found is None:
            found = OpSiteQuantizers()
            setattr(self.owner, SITES_ATTR, found)
        return found

    def call(self, site: str, kind: str, func: Callable, args: tuple, kwargs: dict):
        if self.discovered is not None:
            if site not in self.discovered:
                self.discovered.append(site)
            return func(*args, **kwargs)
        table = self.quantizers()
        if site not in table:
            if site not in self._warned:
                self._warned.add(site)
                warnings.warn(f"op site {site} was not seen during discovery; it stays unquantized", stacklevel=2)
            return func(*args, **kwargs)
        quantizer: Quantizer = table[site]
        if kind == "cat":
            tensors = args[0] if args else kwargs.pop("tensors")
            quantized = [quantizer(t) for t in tensors]
            rest = args[1:] if args else ()
            return func(quantized, *rest, **kwargs)
        left, right = quantizer(args[0]), quantizer(args[1])
        name = getattr(func, "__name__", "")
        if name in ("add_", "__iadd__"):
            return args[0].copy_(torch.add(left, right, **kwargs))
        return func(left, right, *args[2:], **kwargs)


HOOKS_ATTR = "_recipe_op_hooks"


def install_op_hooks(owner: nn.Module, kinds: set[str]) -> OpSiteHooks:
    """Attach (or update) op-site hooks on ``owner`` for the given op kinds."""
    existing: OpSiteHooks | None = owner.__dict__.get(HOOKS_ATTR)
    if existing is not None:
        existing.kinds |= set(kinds)
        return existing
    hooks = OpSiteHooks(owner, kinds)
    owner.__dict__[HOOKS_ATTR] = hooks
    return hooks


def op_hooks(owner: nn.Module) -> OpSiteHooks | None:
    return owner.__dict__.get(HOOKS_ATTR)


def discover_sites(model: nn.Module, owners: dict[str, nn.Module], run_forward: Callable[[], object]) -> dict[str, list[str]]:
    """Run one forward and return, per owner path, the op sites executed directly in its forward."""
    hooks = {name: op_hooks(module) for name, module in owners.items()}
    for h in hooks.values():
        h.discovered = []
    try:
        with torch.no_grad():
            run_forward()
        return {name: list(h.discovered) for name, h in hooks.items()}
    finally:
        for h in hooks.values():
            h.discovered = None
