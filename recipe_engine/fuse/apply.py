"""Folding: the built-in fusion kinds (``pattern`` chains, ``block`` residual blocks) and the driver.

:func:`apply_fusions` runs a recipe's ``fuse:`` entries of one phase, each through its registered
kind (:mod:`.registry`). The built-in kinds:
- ``pattern: [Conv2d, BatchNorm2d(, ReLU)]``: consecutive children of nn.Sequential /
  spconv SparseSequential containers. A trailing ReLU folds into a sparse conv's
  ``act_type`` (``with: {fuse_relu: false}`` keeps it); for dense convs it stays a module.
- ``block: module:Class`` with ``roles: {conv1: bn1, ...}``: residual blocks; their
  Sequential children (``downsample``) are folded as chains too.
Folded BatchNorms (and folded ReLUs) are replaced by ``nn.Identity`` so that forwards that
still call them keep working and module paths stay stable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..quant import sparse
from ..recipe.errors import RecipeError
from ..recipe.schema import FuseEntry, Recipe
from ..select import resolve_type, select
from ..util.gcpause import no_gc_passes
from .fold import fold_batchnorm, fold_batchnorms, fold_relu_into_sparse, is_batchnorm, is_foldable_layer
from .registry import FUSIONS

__all__ = ["Fusion", "apply_fusions", "entry_kind", "fuse_block", "fuse_block_entry", "fuse_chains",
           "fuse_pattern_entry"]


@dataclass
class Fusion:
    """One fold that was made."""

    entry: int
    kind: str  # "chain" | "block" | registered name
    modules: list[str]
    phase: str = "before_calibration"

    def as_dict(self) -> dict:
        return asdict(self)


def _containers() -> tuple[type, ...]:
    kinds: list[type] = [nn.Sequential]
    if sparse.HAVE_SPCONV:
        kinds.append(sparse.spconv.SparseSequential)
    return tuple(kinds)


def _element_types(element: str) -> tuple[type, ...]:
    return tuple(resolve_type(part.strip()) for part in element.split("|"))


def _scope_test(scope: list[str] | None):
    """``name -> bool``: the name is a scope entry or below one. A set lookup per dotted prefix of the name
    (depth-many), not a scan of the scope: a ``within`` selector can select thousands of modules."""
    if scope is None:
        return lambda name: True
    roots = set(scope)

    def test(name: str) -> bool:
        if name in roots:
            return True
        cut = name.rfind(".")
        while cut > 0:
            if name[:cut] in roots:
                return True
            cut = name.rfind(".", 0, cut)
        return False

    return test


def _set_child(parent: nn.Module, key: str, module: nn.Module) -> None:
    parent._modules[key] = module


def fuse_chains(model: nn.Module, pattern: list[str], *, scope: list[str] | None = None,
                options: dict[str, Any] | None = None, entry: int = 0) -> list[Fusion]:
    """Fold every run of ``pattern`` (e.g. [Conv2d, BatchNorm2d, ReLU]) inside Sequential containers."""
    options = options or {}
    types = [_element_types(e) for e in pattern]
    kinds = _containers()
    width = len(types)
    in_scope = _scope_test(scope)
    runs: list[tuple[nn.Module, list[str], list[nn.Module], list[str]]] = []
    # snapshot the containers only (folding replaces children, never containers)
    parents = [(name, module) for name, module in model.named_modules() if isinstance(module, kinds)]
    for parent_name, parent in parents:
        keys = list(parent._modules)
        index = 0
        while index + width <= len(keys):
            run = [parent._modules[keys[index + j]] for j in range(width)]
            if all(isinstance(m, t) for m, t in zip(run, types, strict=True)):
                names = [f"{parent_name}.{key}" if parent_name else key for key in keys[index:index + width]]
                if in_scope(names[0]):
                    runs.append((parent, keys[index:index + width], _checked_run(run, names, entry), names))
                    index += width
                    continue
            index += 1
    # every run found first, then the BN maths of all of them in one pass (fold_batchnorms)
    fold_batchnorms([(run[0], run[1], names[1]) for _, _, run, names in runs],
                    allow_training=bool(options.get("allow_training")))
    return [_replace_folded(parent, keys, run, names, options, entry) for parent, keys, run, names in runs]


def _checked_run(run: list[nn.Module], names: list[str], entry: int) -> list[nn.Module]:
    if not is_foldable_layer(run[0]) or not is_batchnorm(run[1]):
        raise RecipeError(f"fuse[{entry}]: pattern must be [conv-like, BatchNorm(, ReLU)], got "
                          f"[{', '.join(type(m).__name__ for m in run)}] at {names[0]}")
    return run


def _replace_folded(parent: nn.Module, keys: list[str], run: list[nn.Module], names: list[str],
                    options: dict[str, Any], entry: int) -> Fusion:
    """The folded BN (and a ReLU folded into a sparse conv) become ``nn.Identity``."""
    layer, _bn, *rest = run
    _set_child(parent, keys[1], nn.Identity())
    folded = names[:2]
    if rest and isinstance(rest[0], nn.ReLU) and sparse.is_sparse_conv(layer) and options.get("fuse_relu", True):
        fold_relu_into_sparse(layer)
        _set_child(parent, keys[2], nn.Identity())
        folded.append(names[2])
    return Fusion(entry, "chain", folded)


def fuse_block(block: nn.Module, block_name: str, roles: dict[str, str] | None = None, *,
               options: dict[str, Any] | None = None, entry: int = 0) -> list[Fusion]:
    """Fold a residual block's conv/bn pairs (``roles``; default convN -> bnN) and its Sequential children."""
    options = options or {}
    if roles is None:
        roles = {}
        for key in block._modules:
            if key.startswith("conv") and key[4:].isdigit() and f"bn{key[4:]}" in block._modules:
                roles[key] = f"bn{key[4:]}"
    fusions: list[Fusion] = []
    prefix = f"{block_name}." if block_name else ""
    for conv_key, bn_key in roles.items():
        conv = block._modules.get(conv_key)
        bn = block._modules.get(bn_key)
        if conv is None or bn is None:
            raise RecipeError(f"fuse[{entry}]: block {block_name} ({type(block).__name__}) has no "
                              f"{conv_key!r}/{bn_key!r}", hint=f"its children are: {', '.join(block._modules)}")
        if isinstance(bn, nn.Identity):
            continue  # already folded
        fold_batchnorm(conv, bn, name=prefix + bn_key, allow_training=bool(options.get("allow_training")))
        _set_child(block, bn_key, nn.Identity())
        if options.get("fuse_relu") and conv_key == "conv1" and sparse.is_sparse_conv(conv):
            fold_relu_into_sparse(conv)  # the block's own relu after conv1 becomes a no-op
        fusions.append(Fusion(entry, "block", [prefix + conv_key, prefix + bn_key]))
    for key, child in block._modules.items():
        if isinstance(child, _containers()):
            for pattern in (["Conv1d|Conv2d|Conv3d|Linear", "BatchNorm1d|BatchNorm2d|BatchNorm3d"],
                            ["SparseConv", "BatchNorm1d"]):
                if "SparseConv" in pattern[0] and not sparse.HAVE_SPCONV:
                    continue
                for fusion in fuse_chains(child, pattern, options=options, entry=entry):
                    fusion.modules = [f"{prefix}{key}.{m}" for m in fusion.modules]
                    fusion.kind = "block"
                    fusions.append(fusion)
    return fusions


def _scope(model: nn.Module, fuse_entry: FuseEntry, index: int) -> list[str] | None:
    if fuse_entry.within is None:
        return None
    return [m.name for m in select(model, fuse_entry.within, what=f"fuse[{index}].within")]


def fuse_pattern_entry(model: nn.Module, scope: list[str] | None, options: Any, *, entry: FuseEntry,
                       index: int) -> list[Fusion]:
    """The ``pattern`` kind: :func:`fuse_chains` of ``entry.pattern``."""
    return fuse_chains(model, entry.pattern, scope=scope, options=_as_dict(options), entry=index)


def fuse_block_entry(model: nn.Module, scope: list[str] | None, options: Any, *, entry: FuseEntry,
                     index: int) -> list[Fusion]:
    """The ``block`` kind: :func:`fuse_block` on every module of type ``entry.block`` in scope."""
    block_type = resolve_type(entry.block)
    found: list[Fusion] = []
    in_scope = _scope_test(scope)
    for name, module in list(model.named_modules()):
        if isinstance(module, block_type) and in_scope(name):
            found += fuse_block(module, name, entry.roles, options=_as_dict(options), entry=index)
    return found


def _as_dict(options: Any) -> dict[str, Any]:
    return options.model_dump() if hasattr(options, "model_dump") else dict(options)


def entry_kind(fuse_entry: FuseEntry) -> str:
    """The registered fusion kind an entry names: ``pattern``, ``block`` or its ``use``."""
    return "pattern" if fuse_entry.pattern is not None else "block" if fuse_entry.block is not None else fuse_entry.use


@no_gc_passes
def apply_fusions(model: nn.Module, recipe: Recipe, phase: str = "before_calibration") -> list[Fusion]:
    """Apply the recipe's fuse entries of ``phase`` in order; an entry that folds nothing is an error."""
    done: list[Fusion] = []
    for index, fuse_entry in enumerate(recipe.fuse):
        if fuse_entry.phase != phase:
            continue
        scope = _scope(model, fuse_entry, index)
        name = entry_kind(fuse_entry)
        kind = FUSIONS.lookup(name)
        if kind is None:
            raise RecipeError(f"fuse[{index}].use: no fusion pattern named {name!r} "
                              f"(registered fusion kinds: {', '.join(FUSIONS.names())})",
                              hint="register it with recipe_engine.fuse.register(name, fn) before loading")
        options: Any = dict(fuse_entry.options)
        if kind.options is not None:  # checked at load time when the kind was registered then; again here
            options = kind.options.model_validate(options)
        found = kind.call(model, scope, options, fuse_entry, index)
        for fusion in found:
            fusion.entry, fusion.phase = index, phase
        if not found and not fuse_entry.optional:
            what = fuse_entry.pattern or fuse_entry.block or fuse_entry.use
            raise RecipeError(f"fuse[{index}] ({what}) folds nothing",
                              hint="check the types (e.g. BatchNorm1d after sparse convs) or add `optional: true`")
        done += found
    return done
