"""``fuse:`` entries for a draft: every traced layer -> BatchNorm (-> ReLU) pair, as the engine folds it.

A pair is a BatchNorm whose input is the output of a conv/linear (dense or spconv) that
nothing else reads. Pairs that are consecutive children of an ``nn.Sequential`` /
``SparseSequential`` become ``pattern:`` entries (sparse ones with their ReLU, which folds into
spconv's ``act_type``); pairs that are attributes of one block class become ``block:`` entries
(with ``roles`` when the class does not follow the ``convN``/``bnN`` naming). Each pattern is
checked against what the engine's matcher would fold: a pattern that would also fold a pair the
trace did not see connected is restricted with ``within``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..fuse.fold import is_batchnorm, is_foldable_layer
from ..quant import sparse
from .entries import Entry, class_ref
from .trace import Trace


@dataclass
class Pair:
    conv: str
    bn: str
    relu: str | None
    sparse: bool


@dataclass
class FusionDraft:
    entries: list[Entry] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _parent(path: str) -> tuple[str, str]:
    head, _, key = path.rpartition(".")
    return head, key


def _containers() -> tuple[type, ...]:
    kinds: list[type] = [nn.Sequential]
    if sparse.HAVE_SPCONV:
        kinds.append(sparse.spconv.SparseSequential)
    return tuple(kinds)


def find_pairs(model: nn.Module, trace: Trace) -> tuple[list[Pair], list[str]]:
    """Traced layer -> BN (-> ReLU) pairs, and notes on BatchNorms that cannot be folded."""
    modules = dict(model.named_modules())
    readers: dict[int, list[str]] = {}
    for call in trace.leaf_calls():
        for value in call.inputs:
            readers.setdefault(value, []).append(call.path)
    for site in trace.sites:
        for value in site.operands:
            readers.setdefault(value, []).append(site.quantizer)
    pairs, notes, seen = [], [], set()
    for call in trace.leaf_calls():
        if not is_batchnorm(call.module) or call.path in seen or not call.inputs:
            continue
        seen.add(call.path)
        producer = trace.producer.get(call.inputs[0], "")
        layer = modules.get(producer)
        if layer is None or not is_foldable_layer(layer):
            notes.append(f"{call.path}: BatchNorm after {producer or 'a computed tensor'}, not a conv/linear: not folded")
            continue
        others = set(readers.get(call.inputs[0], [])) - {call.path}
        if others:
            notes.append(f"{call.path}: {producer}'s output is also read by {', '.join(sorted(others))}: not folded")
            continue
        relu = None
        for value in call.outputs[:1]:
            after = [p for p in readers.get(value, []) if isinstance(modules.get(p), nn.ReLU)]
            if len(after) == 1 and len(readers.get(value, [])) == 1:
                relu = after[0]
        pairs.append(Pair(producer, call.path, relu, sparse.is_sparse_conv(layer)))
    return pairs, notes


def _consecutive(model_modules: dict[str, nn.Module], first: str, second: str) -> bool:
    parent_a, key_a = _parent(first)
    parent_b, key_b = _parent(second)
    container = model_modules.get(parent_a)
    if parent_a != parent_b or not isinstance(container, _containers()):
        return False
    keys = list(container._modules)
    return key_a in keys and key_b in keys and keys.index(key_b) == keys.index(key_a) + 1


def _type_name(module: nn.Module) -> str:
    return type(module).__name__


def _simulate(model_modules: dict[str, nn.Module], types: list[set[str]], folded: set[str],
              scope: list[str] | None) -> list[tuple[str, ...]]:
    """The runs the engine's ``fuse_chains`` would fold for a pattern of exact class names (in order)."""
    runs = []
    width = len(types)
    for parent_name, parent in model_modules.items():
        if not isinstance(parent, _containers()):
            continue
        keys = list(parent._modules)
        index = 0
        while index + width <= len(keys):
            names = [f"{parent_name}.{k}" if parent_name else k for k in keys[index:index + width]]
            run = [parent._modules[k] for k in keys[index:index + width]]
            if all(_type_name(m) in t for m, t in zip(run, types, strict=True)) and names[1] not in folded and \
                    (scope is None or any(names[0].startswith(s + ".") for s in scope)):
                runs.append(tuple(names))
                index += width
                continue
            index += 1
    return runs


def draft_fusions(model: nn.Module, trace: Trace) -> FusionDraft:
    """The ``fuse:`` entries for ``model`` from its trace."""
    modules = dict(model.named_modules())
    pairs, notes = find_pairs(model, trace)
    draft = FusionDraft(pairs=pairs, notes=notes)
    chains: dict[tuple[bool, bool], list[Pair]] = {}
    blocks: dict[type, list[Pair]] = {}
    for pair in pairs:
        if _consecutive(modules, pair.conv, pair.bn):
            with_relu = pair.sparse and pair.relu is not None and _consecutive(modules, pair.bn, pair.relu)
            chains.setdefault((pair.sparse, with_relu), []).append(pair)
        elif _parent(pair.conv)[0] == _parent(pair.bn)[0]:
            blocks.setdefault(type(modules[_parent(pair.conv)[0]]), []).append(pair)
        else:
            notes.append(f"{pair.conv} -> {pair.bn}: not children of one module, no fuse entry can fold them")
    folded: set[str] = set()
    # sparse with ReLU first: a plain [conv, BN] pattern would also match those runs and leave the ReLU
    for key in sorted(chains, key=lambda k: (not k[0], not k[1])):
        is_sparse, with_relu = key
        members = chains[key]
        types = [{_type_name(modules[p.conv]) for p in members}, {_type_name(modules[p.bn]) for p in members}]
        if with_relu:
            types.append({"ReLU"})
        wanted = {(p.conv, p.bn) for p in members}
        found = _simulate(modules, types, folded, None)
        scope = None
        if {run[:2] for run in found} != wanted:
            scope = sorted({_parent(p.conv)[0] for p in members})
            found = _simulate(modules, types, folded, scope)
        folded |= {run[1] for run in found}
        pattern = ["|".join(sorted(t)) for t in types]
        value: dict = {"pattern": pattern}
        if scope is not None:
            value["within"] = {"name": scope}
        kind = "sparse" if is_sparse else "dense"
        why = [f"{len(found)} {kind} {' -> '.join(pattern)} chain(s) in Sequential containers, e.g. "
               f"{' -> '.join(found[0]) if found else '-'}: BatchNorm folds into the layer before quantization"]
        if with_relu:
            why.append("the ReLU folds into the spconv layer's act_type (libspconv's fused activation)")
        elif not is_sparse:
            why.append("dense ReLUs stay modules (TensorRT fuses them)")
        if scope is not None:
            why.append("`within`: the same types also sit next to each other where the trace saw no conv -> BN flow")
        draft.entries.append(Entry(value, why, count=len(found)))
    for block_type, members in blocks.items():
        roles = {_parent(p.conv)[1]: _parent(p.bn)[1] for p in members}
        sample = modules[_parent(members[0].conv)[0]]
        default = {k: f"bn{k[4:]}" for k in sample._modules
                   if k.startswith("conv") and k[4:].isdigit() and f"bn{k[4:]}" in sample._modules}
        instances = [n for n, m in modules.items() if isinstance(m, block_type)]
        value = {"block": class_ref(block_type)}
        if roles != default:
            value["roles"] = roles
        pairs_text = ", ".join(f"{c}/{b}" for c, b in roles.items())
        why = [f"{len(instances)} {block_type.__name__} block(s): conv/BN pairs {pairs_text} are attributes called in "
               "its own forward (no Sequential a pattern could match)"]
        count = sum(1 for p in members)
        draft.entries.append(Entry(value, why, count=count))
    return draft


__all__ = ["FusionDraft", "Pair", "draft_fusions", "find_pairs"]
