"""Turn a recipe's rules, share groups and disable list into quantizers inside a model.

``plan_quantization`` only selects (nothing changes); ``apply_quantization`` swaps modules,
installs op-site hooks, creates and ties quantizers and records everything in a
:class:`QuantState` attached to the model (``model.recipe_state``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .. import backends
from ..recipe.errors import RecipeError
from ..recipe.schema import QuantizerSpec, QuantizeSpec, Recipe, ShareGroup
from ..select import match_name, select, select_names
from ..util.gcpause import no_gc_passes
from . import backend, kinds
from .ops import SITES_ATTR, OpSiteQuantizers, discover_sites, install_op_hooks

STATE_ATTR = "recipe_state"


@dataclass
class ModuleAssignment:
    """The quantizers one module will get, and the rule that decided it."""

    name: str
    kind: str  # a registered module kind (quant/kinds.py): "dense", "sparse", ...
    input: QuantizerSpec | None
    weight: QuantizerSpec | None
    rule: int


@dataclass
class OpAssignment:
    name: str
    kinds: dict[str, QuantizerSpec]
    rule: int


@dataclass
class QuantPlan:
    """What the recipe selects, before anything changes."""

    modules: dict[str, ModuleAssignment] = field(default_factory=dict)
    ops: dict[str, OpAssignment] = field(default_factory=dict)
    rule_matches: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True)
class QuantizerSettings:
    """The recipe's per-quantizer settings the engine keeps (not stored on the library's objects)."""

    method: str | None = None  # amax method override (None: calibration.method)
    fixed_amax: bool = False  # amax given in the recipe: never calibrated


@dataclass
class QuantState:
    """The quantizers of a quantized model, by name. Shared quantizers appear under several names."""

    quantizers: dict[str, backend.Quantizer] = field(default_factory=dict)
    settings: dict[str, QuantizerSettings] = field(default_factory=dict)  # by quantizer name
    backend: str = backends.DEFAULT  # the backend that made the quantizers
    owners: dict[str, str] = field(default_factory=dict)  # quantizer name -> owning module path
    op_sites: dict[str, list[str]] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)  # share groups, resolved to names
    disabled: list[str] = field(default_factory=list)
    fused: list = field(default_factory=list)  # fusions applied before quantization

    def unique(self) -> list[tuple[list[str], backend.Quantizer]]:
        """Each distinct quantizer object once, with all the names it answers to."""
        seen: dict[int, tuple[list[str], backend.Quantizer]] = {}
        for name, quantizer in self.quantizers.items():
            seen.setdefault(id(quantizer), ([], quantizer))[0].append(name)
        return list(seen.values())

    def enabled_count(self) -> int:
        return sum(1 for _, q in self.unique() if backend.is_enabled(q))

    def settings_of(self, quantizer: backend.Quantizer) -> QuantizerSettings:
        for name, candidate in self.quantizers.items():
            if candidate is quantizer:
                return self.settings.get(name, QuantizerSettings())
        return QuantizerSettings()

    def is_fixed(self, quantizer: backend.Quantizer) -> bool:
        """Whether the recipe fixed this quantizer's amax (so calibration leaves it alone)."""
        return self.settings_of(quantizer).fixed_amax

    def add(self, name: str, owner: str, quantizer: backend.Quantizer, spec: QuantizerSpec) -> None:
        self.quantizers[name] = quantizer
        self.owners[name] = owner
        self.settings[name] = QuantizerSettings(spec.method, spec.amax is not None)


def qualify(owner: str, leaf: str) -> str:
    """The quantizer name of ``leaf`` (input, weight, add0...) in module ``owner`` ('' is the root)."""
    return f"{owner}.{leaf}" if owner else leaf


def _resolve(ref, recipe: Recipe) -> QuantizerSpec | None:
    if ref is None or ref is False:
        return None
    return recipe.quantizers[ref] if isinstance(ref, str) else ref


def _kind(module: nn.Module, backend_name: str) -> str | None:
    kind = kinds.kind_of(module, backend_name)
    return kind.name if kind is not None else None


def backend_name(recipe: Recipe) -> str:
    return getattr(recipe, "backend", None) or backends.DEFAULT


def plan_quantization(model: nn.Module, recipe: Recipe) -> QuantPlan:
    """Apply every rule's selector in order; later rules override earlier ones per module."""
    plan = QuantPlan()
    named = list(model.named_modules())
    which = backend_name(recipe)
    kind_of = functools.partial(_kind, backend_name=which)
    for index, rule in enumerate(recipe.rules):
        matches = select(model, rule.select, what=f"rules[{index}].select", modules=named)
        plan.rule_matches.append([m.name for m in matches])
        if rule.quantize is not None:
            typed = not isinstance(rule.select, str) and rule.select.type is not None
            quantizable = [m for m in matches if kind_of(m.module)]
            if typed and len(quantizable) < len(matches):
                bad = next(m for m in matches if not kind_of(m.module))
                raise RecipeError(f"rules[{index}] selects {bad.name} ({type(bad.module).__name__}), which has no "
                                  "quantized version", hint="quantize layers (Conv*, ConvTranspose*, Linear, pooling, "
                                  "spconv convolutions); use `ops:` for adds and concats inside blocks; other "
                                  "layers need a module kind (recipe_engine.quant.kinds.register; registered: "
                                  f"{', '.join(kinds.registered())})")
            if not quantizable and matches:
                raise RecipeError(f"rules[{index}] `quantize` selects no quantizable layer (matched "
                                  f"{', '.join(m.name for m in matches[:5])})",
                                  hint="select Conv/Linear/pooling/spconv layers, e.g. {type: Conv2d}")
            for match in quantizable:
                if rule.quantize is False:
                    plan.modules.pop(match.name, None)
                    continue
                spec: QuantizeSpec = rule.quantize
                weight = _resolve(spec.weight, recipe)
                if weight is not None and not kinds.KINDS.get(kind_of(match.module)).weighted(match.module, which):
                    raise RecipeError(f"rules[{index}]: {match.name} ({type(match.module).__name__}) has no weight",
                                      hint="give pooling layers an `input` quantizer only")
                plan.modules[match.name] = ModuleAssignment(match.name, kind_of(match.module),
                                                            _resolve(spec.input, recipe), weight, index)
        if rule.ops is not None:
            for match in matches:
                current = plan.ops.get(match.name) or OpAssignment(match.name, {}, index)
                for kind, ref in rule.ops.items():
                    if ref is False:
                        current.kinds.pop(kind, None)
                    else:
                        current.kinds[kind] = _resolve(ref, recipe)
                current.rule = index
                if current.kinds:
                    plan.ops[match.name] = current
                else:
                    plan.ops.pop(match.name, None)
    return plan


@no_gc_passes
def apply_quantization(model: nn.Module, recipe: Recipe, *, plan: QuantPlan | None = None,
                       op_sites: dict[str, list[str]] | None = None,
                       run_forward: Callable[[], object] | None = None) -> QuantState:
    """Quantize ``model`` in place according to ``recipe``.

    Op sites are found by calling ``run_forward`` once (a forward on one calibration batch),
    unless ``op_sites`` (saved from an earlier run) is given.
    """
    plan = plan or plan_quantization(model, recipe)
    modules = dict(model.named_modules())
    which = backend_name(recipe)
    state = QuantState(backend=which)
    calibration = recipe.calibration

    def make(spec: QuantizerSpec, axis: int | None = None) -> backend.Quantizer:
        try:
            return backend.make_quantizer(spec, calibration, axis, backend=which)
        except ValueError as exc:
            raise RecipeError(str(exc), hint="see the backend section of the README") from None

    for name, assignment in plan.modules.items():
        module = modules[name]
        kind = kinds.KINDS.get(assignment.kind)
        input_q = make(assignment.input) if assignment.input else None
        weight_q = make(assignment.weight, kind.axis(module, which)) if assignment.weight else None
        kind.install(module, input_q, weight_q, which)
        if input_q is not None:
            state.add(qualify(name, "input"), name, input_q, assignment.input)
        if weight_q is not None:
            state.add(qualify(name, "weight"), name, weight_q, assignment.weight)
    if plan.ops:
        owners = {name: modules[name] for name in plan.ops}
        for name, assignment in plan.ops.items():
            install_op_hooks(owners[name], set(assignment.kinds))
        if op_sites is None:
            if run_forward is None:
                raise RecipeError("op-input rules need one forward pass to find their op sites",
                                  hint="give calibration data (data.calibration) in the recipe")
            op_sites = discover_sites(model, owners, run_forward)
        for name, assignment in plan.ops.items():
            sites = [s for s in op_sites.get(name, []) if s.rstrip("0123456789") in assignment.kinds]
            if not sites:
                wanted = "/".join(sorted(assignment.kinds))
                raise RecipeError(f"rules[{assignment.rule}].ops: module {name} ({type(owners[name]).__name__}) runs "
                                  f"no {wanted} directly in its forward",
                                  hint="select the module whose own forward contains the op (not a parent)")
            table = OpSiteQuantizers()
            for site in sites:
                kind = site.rstrip("0123456789")
                quantizer = make(assignment.kinds[kind])
                table[site] = quantizer
                state.add(qualify(name, site), name, quantizer, assignment.kinds[kind])
            setattr(owners[name], SITES_ATTR, table)
            state.op_sites[name] = sites
    _apply_shares(model, recipe, state, modules)
    setattr(model, STATE_ATTR, state)
    return state


def _replace(model_modules: dict[str, nn.Module], state: QuantState, name: str, quantizer) -> None:
    """Put ``quantizer`` in the slot (module input/weight or op site) that quantizer name ``name`` is."""
    owner = model_modules[state.owners[name]]
    owner_path = state.owners[name]
    suffix = name[len(owner_path) + 1:] if owner_path else name
    if suffix in ("input", "weight"):
        backend.set_module_quantizer(owner, suffix, quantizer)
    else:
        getattr(owner, SITES_ATTR)[suffix] = quantizer


def _share_groups(model: nn.Module, recipe: Recipe, names: list[str]) -> list[tuple[str, list[str], bool]]:
    """(label, member names, optional) for every share group, expanding `for_each`."""
    found = []
    for index, entry in enumerate(recipe.share):
        group = entry if isinstance(entry, ShareGroup) else ShareGroup(quantizers=list(entry))
        if group.for_each is None:
            members = select_names(names, group.quantizers, what=f"share[{index}]", optional=group.optional)
            found.append((f"share[{index}]", members, group.optional))
            continue
        for match in select(model, group.for_each, what=f"share[{index}].for_each"):
            patterns = [p.replace("{module}", match.name) for p in group.quantizers]
            members = select_names(names, patterns, what=f"share[{index}] for {match.name}", optional=group.optional)
            found.append((f"share[{index}] for {match.name}", members, group.optional))
    return found


def _apply_shares(model: nn.Module, recipe: Recipe, state: QuantState,
                  modules: dict[str, nn.Module] | None = None) -> None:
    groups = _share_groups(model, recipe, list(state.quantizers))
    if not groups:
        return
    modules = modules if modules is not None else dict(model.named_modules())
    names_of: dict[int, list[str]] = {}  # quantizer object -> the names it answers to, in state order
    for name, quantizer in state.quantizers.items():
        names_of.setdefault(id(quantizer), []).append(name)
    for label, members, optional in groups:
        if len(members) < 2:
            if optional:
                continue
            raise RecipeError(f"{label} resolves to {members}: a share group needs two or more quantizers")
        leader = state.quantizers[members[0]]
        for member in members[1:]:
            current = state.quantizers[member]
            if current is leader:
                continue
            if not backend.compatible(leader, current):
                raise RecipeError(f"{label}: {member} and {members[0]} have different descriptors "
                                  f"({backend.quantizer_summary(current)} vs {backend.quantizer_summary(leader)})",
                                  hint="shared quantizers need the same bits, axis, sign and calibrator")
            moved = names_of.pop(id(current))
            for other_name in moved:
                _replace(modules, state, other_name, leader)
                state.quantizers[other_name] = leader
                state.settings[other_name] = state.settings.get(members[0], QuantizerSettings())
            names_of[id(leader)] += moved
        state.groups.append(members)


def disable_matching(state: QuantState, patterns: list[str], *, what: str = "disable") -> list[str]:
    """Disable quantizers whose name, owning module or an ancestor of it matches a pattern."""
    disabled: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        hits = []
        for name, owner in state.owners.items():
            parts = owner.split(".")
            candidates = [name] + [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
            if any(match_name(pattern, c) for c in candidates):
                hits.append(name)
        if not hits:
            select_names(list(state.quantizers), [pattern], what=what)  # raises with the nearest names
        for name in hits:
            backend.set_enabled(state.quantizers[name], False)
            if name not in seen:
                seen.add(name)
                disabled.append(name)
    # a shared quantizer disabled under one name is disabled under all of them
    for name, quantizer in state.quantizers.items():
        if name not in seen and not backend.is_enabled(quantizer):
            seen.add(name)
            disabled.append(name)
    state.disabled = sorted(set(state.disabled) | set(disabled))
    return disabled


def get_state(model: nn.Module) -> QuantState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise RecipeError("this model has not been quantized by recipe-engine (call apply() first)")
    return state
