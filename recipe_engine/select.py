"""The selector engine: one matcher for rules, fusion scopes, share groups and disable lists.

Name patterns are globs over dotted paths (``encoder.conv*.0``; ``*`` does not cross dots,
``**`` does) or, with a ``re:`` prefix, regular expressions matched in full. Types are
classes given as ``package.module:Class`` / ``package.module.Class`` or short names
known to the engine (``Conv2d``, ``SubMConv3d``, ``SparseConv`` ...); subclasses match
unless ``exact`` is set.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from .recipe.errors import RecipeError, dotted
from .recipe.schema import Selector

# Short names -> importable paths. Sparse names resolve only when spconv is installed.
_SHORT_TYPES = {
    "SparseConv": "spconv.pytorch.conv:SparseConvolution",
    "SparseConvolution": "spconv.pytorch.conv:SparseConvolution",
    "SparseSequential": "spconv.pytorch:SparseSequential",
    "SparseModule": "spconv.pytorch:SparseModule",
}
_SPCONV_CLASSES = [f"{kind}{n}d" for kind in ("SubMConv", "SparseConv", "SparseInverseConv", "SparseConvTranspose")
                   for n in (1, 2, 3, 4)]
SPCONV_INSTALL_HINT = ("install spconv: `pip install 'recipe-engine[cpu]'` (CPU) or "
                       "'recipe-engine[cu118]' / '[cu121]' / '[cu124]' on GPU machines")


def _is_spconv_name(name: str) -> bool:
    short = name.split(":")[-1].split(".")[-1]
    return name.startswith("spconv") or short in _SPCONV_CLASSES or name in _SHORT_TYPES


@functools.cache
def resolve_type(name: str) -> type:
    """Resolve a type name from a recipe to a class; raise RecipeError with a fix if impossible."""
    target = _SHORT_TYPES.get(name)
    if target is None and ":" not in name and "." not in name:
        if isinstance(getattr(nn, name, None), type):
            return getattr(nn, name)
        if name not in _SPCONV_CLASSES:
            known = [n for n in dir(nn) if isinstance(getattr(nn, n), type)] + _SPCONV_CLASSES + list(_SHORT_TYPES)
            close = difflib.get_close_matches(name, known, n=3)
            raise RecipeError(f"unknown type {name!r}: not a torch.nn class, an spconv class or an engine short name",
                              hint=(f"did you mean {', '.join(map(repr, close))}? " if close else "")
                              + "other classes are written 'package.module:Class'")
        target = f"spconv.pytorch:{name}"
    if target is None and name.startswith("spconv.") and ":" not in name:
        target = "spconv.pytorch:" + name.split(".")[-1]
    if target is None:
        target = name if ":" in name else ".".join(name.split(".")[:-1]) + ":" + name.split(".")[-1]
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise RecipeError(f"type {name!r} is not a class name", hint="write 'package.module:Class' or a torch.nn class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_spconv_name(name):
            raise RecipeError(f"type {name!r} needs spconv, which is not installed",
                              hint=SPCONV_INSTALL_HINT) from None
        from .util.import_hints import not_found_hint

        hint = (not_found_hint(exc.name) if exc.name and (module_name + ".").startswith(exc.name + ".") else
                "write types as 'package.module:Class' or a torch.nn class name")
        raise RecipeError(f"type {name!r}: cannot import module {module_name!r} ({exc})", hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while being imported
        raise RecipeError(f"type {name!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}",
                          hint=f"fix {module_name!r} (try `python -c 'import {module_name}'`)") from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise RecipeError(f"type {name!r}: {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, type) or not issubclass(obj, nn.Module):
        raise RecipeError(f"type {name!r} is not a module class (a subclass of torch.nn.Module)",
                          hint="selectors and fusions match modules: name a layer or block class")
    return obj


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern:
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise RecipeError(f"bad regular expression {pattern!r}: {exc}") from None
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            continue
        char = pattern[index]
        if char == "*":
            out += r"[^.]*"
        elif char == "?":
            out += r"[^.]"
        elif char == "[":
            end = pattern.find("]", index)
            if end == -1:
                out += re.escape(char)
            else:
                out += fnmatch.translate(pattern[index:end + 1])[4:-3]
                index = end
        else:
            out += re.escape(char)
        index += 1
    return re.compile(out)


def match_name(pattern: str, name: str) -> bool:
    """True when ``name`` matches the glob (or ``re:`` regex) ``pattern`` in full."""
    return _compile(pattern).fullmatch(name) is not None


def match_any(patterns: str | Sequence[str] | None, name: str) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(match_name(p, name) for p in patterns)


def as_selector(ref: str | Selector) -> Selector:
    """A selector from its shorthand (a plain string is a name pattern)."""
    return Selector(name=ref) if isinstance(ref, str) else ref


def _is_under(parent_pattern: str, name: str) -> bool:
    parts = name.split(".")
    return any(match_name(parent_pattern, ".".join(parts[:i])) for i in range(1, len(parts)))


def _type_matches(module: nn.Module, types: Sequence[type], exact: bool) -> bool:
    if exact:
        return type(module) in types
    return isinstance(module, tuple(types))


@dataclass
class Match:
    name: str
    module: nn.Module


def select(model: nn.Module, selector: str | Selector, *, what: str = "selector",
           modules: Iterable[tuple[str, nn.Module]] | None = None) -> list[Match]:
    """Modules of ``model`` matched by ``selector``, in ``named_modules()`` order.

    Raises RecipeError listing the nearest module names/types when nothing matches
    (unless the selector is optional).
    """
    sel = as_selector(selector)
    base = key_of(what)
    type_names = [sel.type] if isinstance(sel.type, str) else list(sel.type or [])
    types = []
    for index, type_name in enumerate(type_names):
        try:
            types.append(resolve_type(type_name))
        except RecipeError as exc:
            where = base + ("type",) + ((index,) if isinstance(sel.type, list) else ())
            raise RecipeError(f"{what}: {exc.headline}", hint=exc.hint, key=where) from None
    exclude = sel.exclude
    candidates: list[Match] = []
    pool = list(modules) if modules is not None else list(model.named_modules())
    for name, module in pool:
        if not name and (sel.name is not None or sel.under is not None):
            continue  # the root module has no path: only a type selector can select it
        if sel.name is not None and not match_any(sel.name, name):
            continue
        if types and not _type_matches(module, types, sel.exact):
            continue
        if sel.under is not None and not _is_under(sel.under, name):
            continue
        candidates.append(Match(name, module))
    found = [m for m in candidates if exclude is None or not match_any(exclude, m.name)]
    if not found and not sel.optional:
        raise no_match_error(sel, pool, what)
    if not sel.optional:
        _check_every_entry(sel, types, candidates, pool, what, base)
    return found


def key_of(what: str) -> tuple:
    """The recipe key a label like ``rules[2].select`` or ``share[0] for layer1`` names (``()`` if none)."""
    head = what.split(" ")[0].rstrip(":")
    if not re.fullmatch(r"[A-Za-z_]\w*(\[\d+\]|\.[A-Za-z_]\w*)*", head):
        return ()
    return tuple(int(i) if i else n for n, i in re.findall(r"([A-Za-z_]\w*)|\[(\d+)\]", head))


def _check_every_entry(sel: Selector, types: list[type], candidates: list[Match], pool: list, what: str,
                       base: tuple) -> None:
    """Every entry of a `name`/`type` list and every `exclude` pattern must match something (typos are errors)."""
    names = [m.name for m in candidates]
    if isinstance(sel.name, list):
        for index, pattern in enumerate(sel.name):
            if not any(match_name(pattern, n) for n in names):
                close = difflib.get_close_matches(pattern, [n for n, _ in pool if n], n=3, cutoff=0.5)
                raise RecipeError(f"{dotted(base + ('name', index))}: {pattern!r} matches no module (the other "
                                  f"entries of {what} do)",
                                  hint=(f"nearest module paths: {', '.join(close)}; " if close else "")
                                  + "every entry of a list must match; add `optional: true` if that is expected",
                                  key=base + ("name", index))
    if isinstance(sel.type, list):
        for index, cls in enumerate(types):
            if not any(_type_matches(m.module, [cls], sel.exact) for m in candidates):
                raise RecipeError(f"{dotted(base + ('type', index))}: {sel.type[index]!r} matches no module (the "
                                  f"other entries of {what} do)",
                                  hint="every entry of a list must match; add `optional: true` if that is expected",
                                  key=base + ("type", index))
    patterns = [sel.exclude] if isinstance(sel.exclude, str) else list(sel.exclude or [])
    for index, pattern in enumerate(patterns):
        if not any(match_name(pattern, n) for n in names):
            key = base + ("exclude",) + ((index,) if isinstance(sel.exclude, list) else ())
            raise RecipeError(f"{dotted(key)}: {pattern!r} removes nothing (it matches no module {what} selects)",
                              hint="check the pattern against `recipe plan`; add `optional: true` if that is expected",
                              key=key)


def no_match_error(sel: Selector, pool: list[tuple[str, nn.Module]], what: str) -> RecipeError:
    """A RecipeError for a selector that matched nothing, naming the closest candidates."""
    names = [n for n, _ in pool if n]
    hints = []
    for pattern in ([sel.name] if isinstance(sel.name, str) else list(sel.name or [])):
        stem = pattern[3:] if pattern.startswith("re:") else pattern.replace("*", "").replace("?", "")
        close = difflib.get_close_matches(stem, names, n=5, cutoff=0.3)
        if close:
            hints.append("nearest module paths: " + ", ".join(close))
    if sel.type is not None:
        present = sorted({f"{type(m).__module__}:{type(m).__qualname__}" for _, m in pool})
        wanted = [sel.type] if isinstance(sel.type, str) else sel.type
        close = [c for w in wanted for c in difflib.get_close_matches(str(w), present, n=3, cutoff=0.3)]
        hints.append("module types in the model include: " + ", ".join(close or present[:8]))
    if sel.under is not None:
        hints.append(f"check that {sel.under!r} is a module path; top-level modules: "
                     + ", ".join(sorted({n.split('.')[0] for n in names})[:10]))
    described = sel.model_dump(exclude_defaults=True)
    return RecipeError(f"{what} {described} selects nothing",
                       hint="; ".join(hints + ["add `optional: true` if that is expected"]), key=key_of(what))


def select_names(names: Sequence[str], patterns: str | Sequence[str], *, what: str,
                 optional: bool = False) -> list[str]:
    """Names (quantizer names, op sites) matched by glob/regex ``patterns``; error if none match."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    found: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if match_name(pattern, n)]
        if not hits and not optional:
            close = difflib.get_close_matches(pattern.removeprefix("re:"), list(names), n=5, cutoff=0.3)
            raise RecipeError(f"{what}: {pattern!r} matches no quantizer",
                              hint=("nearest quantizer names: " + ", ".join(close)) if close else
                              "run `recipe plan` to list quantizer names", key=key_of(what))
        for hit in hits:
            if hit not in seen:
                seen.add(hit)
                found.append(hit)
    return found
