"""``rules:``, ``share:`` and ``disable:`` entries for a draft, from a trace.

- Layer rules: one rule for the spconv convolutions and one for the dense conv/linear layers
  that ran (``input: act, weight: w_channel``, the base recipe's descriptors).
- Op rules: every module class whose own forward ran a ``+`` or ``torch.cat`` on two floating
  tensors gets ``ops: {add: act}`` / ``{cat: act}`` (one quantizer, one scale, per op site).
- Disable (NVIDIA's defaults, as suggestions): the first sparse layer (it reads raw point
  features) and the layers whose output is the model's output (the head's last layers).
- Share groups: quantizers that read one tensor (a block input read by ``conv1`` and the
  residual add or the downsample), and a concat with the quantizer that reads its output, are
  tied so that TensorRT sees one scale (no reformat) and libspconv keeps an int8 chain. Groups
  repeated in every instance of a class are written once with ``for_each``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .entries import Entry, class_ref, importable, lca, owner_of
from .trace import Trace, layer_kind


@dataclass
class QuantDraft:
    rules: list[Entry] = field(default_factory=list)
    share: list[Entry] = field(default_factory=list)
    disable: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)  # executed quantizable layer -> sparse|dense
    groups: list[list[str]] = field(default_factory=list)  # share groups, resolved to quantizer names


def _layer_rules(model: nn.Module, layers: dict[str, str]) -> list[Entry]:
    modules = dict(model.named_modules())
    entries = []
    for kind in ("sparse", "dense"):
        names = [n for n, k in layers.items() if k == kind]
        if not names:
            continue
        types = sorted({type(modules[n]).__name__ for n in names})
        select: dict = {"type": types}
        unused = [n for n, m in modules.items() if layer_kind(m) == kind and type(m).__name__ in types
                  and n not in layers]
        subclassed = [n for n, m in modules.items() if layer_kind(m) is None and
                      any(type(m).__name__ != t and any(c.__name__ == t for c in type(m).__mro__) for t in types)]
        why = [f"{len(names)} {kind} layer(s) ran: {', '.join(types)}; input: per-tensor histogram (act), weight: "
               "per-channel max (w_channel), both from the base recipe"]
        if unused:
            select["exclude"] = unused
            why.append(f"`exclude`: {len(unused)} layer(s) of these types did not run on the traced batch "
                       "(they would never be calibrated)")
        if subclassed:
            select["exact"] = True
            why.append(f"`exact`: subclasses of these types ({', '.join(subclassed[:3])}) have no quantized version")
        entries.append(Entry({"select": select, "quantize": {"input": "act", "weight": "w_channel"}}, why,
                             count=len(names)))
    return entries


def _op_rules(model: nn.Module, trace: Trace, notes: list[str]) -> list[Entry]:
    modules = dict(model.named_modules())
    kinds_of: dict[str, set[str]] = {}
    for site in trace.sites:
        owner = modules.get(site.owner)
        if owner is None or layer_kind(owner) is not None or _library(owner):
            continue
        kinds_of.setdefault(site.owner, set()).add(site.kind)
    by_class: dict[type, list[str]] = {}
    for owner in kinds_of:
        by_class.setdefault(type(modules[owner]), []).append(owner)
    entries = []
    for cls, owners in by_class.items():
        kinds = sorted(set().union(*(kinds_of[o] for o in owners)))
        instances = [n for n, m in modules.items() if isinstance(m, cls)]
        sites = [s.quantizer for s in trace.sites if s.owner in owners]
        example = ", ".join(sites[:3]) + (f", ... ({len(sites)} sites)" if len(sites) > 3 else "")
        why = [f"{cls.__name__}.forward runs {'/'.join(kinds)} on two tensors ({example}): one quantizer per op "
               "site, so TensorRT gets one scale for all its inputs"]
        if importable(cls) and set(instances) == set(owners):
            select: dict = {"type": class_ref(cls)}
        else:
            select = {"name": sorted(owners)} if "" not in owners else {"type": class_ref(cls)}
            if set(instances) != set(owners):
                why.append(f"by name: {len(instances) - len(owners)} other {cls.__name__} instance(s) ran no such op")
        entries.append(Entry({"select": select, "ops": {k: "act" for k in kinds}}, why, count=len(sites)))
    for loose in trace.loose_sites:
        notes.append(f"{loose}: outside any module's forward, the engine cannot quantize it")
    return entries


def _library(module: nn.Module) -> bool:
    return type(module).__module__.startswith(("torch.", "spconv.", "pytorch_quantization.", "modelopt."))


def _disable(trace: Trace, layers: dict[str, str]) -> list[Entry]:
    entries = []
    first_sparse = next((c.path for c in trace.calls if layers.get(c.path) == "sparse"), None)
    if first_sparse is not None:
        entries.append(Entry(first_sparse, [f"{first_sparse}: the first sparse layer reads the raw point features "
                                            "(coordinates, intensity); NVIDIA's CenterPoint/BEVFusion PTQ keeps it "
                                            "in full precision"]))
    terminal: set[str] = set()
    for value in trace.outputs:
        terminal |= trace.sources.get(value, frozenset())
    for path in sorted(terminal, key=lambda p: [c.path for c in trace.calls].index(p)):
        if path != first_sparse and path in layers:
            entries.append(Entry(path, [f"{path}: its output is the model's output (the last layer of a head); "
                                        "keeping it in full precision costs little and protects the result"]))
    return entries


def _readers(trace: Trace, layers: dict[str, str], disabled: set[str]) -> dict[int, list[str]]:
    readers: dict[int, list[str]] = {}
    for call in trace.leaf_calls():
        if call.path in layers and call.inputs and call.path not in disabled:
            readers.setdefault(call.inputs[0], []).append(f"{call.path}.input" if call.path else "input")
    return readers


Edge = tuple[str, str, str, bool]  # two quantizer names, why, required (False: a suggestion)


def _edges(trace: Trace, layers: dict[str, str], disabled: set[str], sites: set[str]) -> list[Edge]:
    """Pairs of quantizers to tie: required when they see one distribution (or libspconv needs it)."""
    layer_readers = _readers(trace, layers, disabled)
    site_readers: dict[int, list[str]] = {}
    for site in trace.sites:
        if site.quantizer in sites:
            for value in dict.fromkeys(site.operands):
                site_readers.setdefault(value, []).append(site.quantizer)
    edges: list[Edge] = []
    for value in dict.fromkeys([*layer_readers, *site_readers]):
        source = trace.producer.get(value, "the model's input")
        lr, sr = layer_readers.get(value, []), site_readers.get(value, [])
        for other in lr[1:]:
            edges.append((lr[0], other, f"{' and '.join(lr)} read one tensor (from {source})", True))
        first = lr[0] if lr else (sr[0] if sr else None)
        sparse_value = any(layers.get(owner_of(r)) == "sparse" for r in lr) or layers.get(source) == "sparse"
        for site in sr:
            if site == first:
                continue
            if sparse_value:
                edges.append((first, site, f"{first} and {site} read one sparse tensor (from {source}): libspconv "
                              "stores it int8 only when every reader uses one quantizer (an int8 chain)", True))
            else:
                edges.append((first, site, f"{first} and {site} read one tensor (from {source}); one scale saves "
                              "TensorRT a reformat, but the op's other inputs then share it (usually costs "
                              "accuracy)", False))
    for site in trace.sites:
        if site.kind == "cat" and site.quantizer in sites:
            for reader in layer_readers.get(site.result, []):
                edges.append((site.quantizer, reader, f"{site.quantizer}'s output feeds {reader}: a concat passes "
                              "int8 through, so one scale avoids a reformat", True))
    return edges


def _components(edges: list[Edge]) -> tuple[list[list[str]], dict]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b, _, _ in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    components: dict[str, list[str]] = {}
    for name in parent:
        components.setdefault(find(name), []).append(name)
    groups = [sorted(m) for m in components.values() if len(m) > 1]
    reasons = {}
    for group in groups:
        members = set(group)
        reasons[tuple(group)] = list(dict.fromkeys(why for a, b, why, _ in edges if a in members))
    return groups, reasons


def _share_entries(model: nn.Module, groups: list[list[str]], reasons: dict) -> list[Entry]:
    modules = dict(model.named_modules())
    templated: dict[tuple[type, tuple[str, ...]], list[tuple[str, list[str]]]] = {}
    for group in groups:
        anchor = lca([owner_of(q) for q in group])
        relative = tuple(q[len(anchor) + 1:] if anchor else q for q in group)
        templated.setdefault((type(modules[anchor]), relative), []).append((anchor, group))
    entries = []
    for (cls, relative), found in templated.items():
        instances = {n for n, m in modules.items() if type(m) is cls}
        anchors = {a for a, _ in found}
        first_reason = reasons[tuple(found[0][1])]
        if len(found) > 1 and anchors == instances and importable(cls) and all(a for a in anchors):
            value = {"for_each": {"type": class_ref(cls)}, "quantizers": [f"{{module}}.{r}" for r in relative]}
            why = [f"in every {cls.__name__} ({len(found)}), e.g. in {found[0][0]}: " + "; ".join(first_reason[:2])]
            entries.append(Entry(value, why, count=len(found)))
            continue
        for _, group in found:
            entries.append(Entry(list(group), reasons[tuple(group)][:3], count=1))
    return entries


def draft_quantization(model: nn.Module, trace: Trace) -> QuantDraft:
    draft = QuantDraft()
    modules = dict(model.named_modules())
    for call in trace.leaf_calls():
        kind = layer_kind(call.module)
        if kind is not None and call.path and modules.get(call.path) is call.module:
            draft.layers.setdefault(call.path, kind)
    draft.rules = _layer_rules(model, draft.layers)
    op_rules = _op_rules(model, trace, draft.notes)
    draft.rules += op_rules
    draft.disable = _disable(trace, draft.layers)
    disabled = {e.value for e in draft.disable}
    quantized_owners = {s.owner for s in trace.sites if _owner_ok(modules.get(s.owner))}
    sites = {s.quantizer for s in trace.sites if s.owner in quantized_owners and s.owner not in disabled}
    edges = _edges(trace, draft.layers, disabled, sites)
    draft.groups, reasons = _components([e for e in edges if e[3]])
    draft.share = _share_entries(model, draft.groups, reasons)
    every, every_reasons = _components(edges)
    extra = [g for g in every if g not in draft.groups]
    for entry in _share_entries(model, extra, every_reasons):
        entry.commented = ("a suggestion, not active: uncomment to tie them for TensorRT speed when the accuracy "
                           "allows (compare with `recipe run`)")
        draft.share.append(entry)
    return draft


def _owner_ok(module: nn.Module | None) -> bool:
    return module is not None and layer_kind(module) is None and not _library(module)


__all__ = ["QuantDraft", "draft_quantization"]
