"""Safe, bounded YAML parsing that also records where every key and list item sits in the file.

A recipe is data, so the parser accepts only JSON-like YAML: mappings, lists, strings,
numbers, booleans and null. Everything else PyYAML's safe loader would build (``!!set``,
``!!binary``, timestamps and dates, ``!!omap``/``!!pairs``) is a located error, because
such values have no canonical JSON form (a set's order depends on PYTHONHASHSEED).

Merge keys (``<<: *anchor``) are supported as ``yaml.safe_load`` does: the anchored
mapping's keys are merged in (explicit keys win); merged keys keep the position where the
anchored mapping wrote them.

Hostile input is bounded before anything expensive runs: documents over ``MAX_BYTES``,
nesting deeper than ``MAX_DEPTH`` (counted through aliases) and documents that expand to
more than ``MAX_NODES`` values (an alias "billion laughs" bomb) are refused with a located
error instead of exhausting the stack, the memory or the user's patience.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import Diagnostic, Position, RecipeError

MAX_BYTES = 1_000_000
MAX_DEPTH = 64
MAX_NODES = 200_000

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
_NOT_JSON = {
    _CORE + "timestamp": "a date/time is not a JSON value: quote it to keep it as a string",
    _CORE + "binary": "!!binary values are not supported: recipes hold JSON-like data only",
    _CORE + "set": "!!set is not supported (its order is not stable): write a list",
    _CORE + "omap": "!!omap is not supported: write a mapping",
    _CORE + "pairs": "!!pairs is not supported: write a mapping or a list of mappings",
}


def _pos(file: str, node: yaml.Node | yaml.Event) -> Position:
    return Position(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _refuse(position: Position, message: str, hint: str | None = None) -> RecipeError:
    return RecipeError(diagnostics=[Diagnostic(position, message, hint)])


def parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple, Position]]:
    """Parse ``text`` with safe_load semantics; return the data and a path -> position map.

    Duplicate keys are errors (PyYAML would silently keep the last one).
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise _refuse(Position(file), f"recipe file is too large ({size} bytes; the limit is {MAX_BYTES})",
                      "a recipe is a short configuration file: move data out of it (e.g. into a data factory)")
    try:
        _check_nesting(text, file)
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_graph(node, file)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(file, mark.line + 1, mark.column + 1) if mark else Position(file)
        problem = exc.problem or str(exc)
        context = f" ({exc.context})" if exc.context else ""
        raise RecipeError(diagnostics=[Diagnostic(pos, f"malformed YAML: {problem}{context}",
                                                  "check indentation, colons and quotes on this line")]) from None
    except yaml.YAMLError as exc:
        raise RecipeError(diagnostics=[Diagnostic(Position(file), f"malformed YAML: {exc}")]) from None
    positions: dict[tuple, Position] = {}
    problems: list[Diagnostic] = []
    if node is not None:
        positions[()] = _pos(file, node)
        _walk(node, (), file, positions, problems)
    if problems:
        raise RecipeError(diagnostics=problems)
    return data, positions


def _check_nesting(text: str, file: str) -> None:
    """Refuse deep nesting from the event stream (the composer would recurse once per level)."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _refuse(_pos(file, event), f"YAML nesting is deeper than {MAX_DEPTH} levels",
                              "a recipe never needs this much nesting: flatten the structure")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_graph(root: yaml.Node, file: str) -> None:
    """Bound the document as expanded through aliases: size, depth, no cycles, JSON-like tags only.

    Iterative, memoised per node: an alias bomb is measured in time linear in the file.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_stack.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise _refuse(_pos(file, node), f"the document expands to more than {MAX_NODES} values "
                              "through aliases", "aliases (*name) may repeat a value, not multiply it: "
                              "remove the nested aliases")
            if depth[key] > MAX_DEPTH:
                raise _refuse(_pos(file, node), f"YAML nesting (through aliases) is deeper than {MAX_DEPTH} levels",
                              "flatten the structure or use fewer nested aliases")
            continue
        if key in size:
            continue
        if key in on_stack:
            raise _refuse(_pos(file, node), "recursive YAML alias: a value contains itself",
                          "an alias (*name) must not refer to a mapping or list that contains it")
        _check_tag(node, file)
        on_stack.add(key)
        stack.append((node, True))
        for child in reversed(_children(node)):
            if id(child) not in size:
                stack.append((child, False))


def _check_tag(node: yaml.Node, file: str) -> None:
    tag = node.tag
    if tag in _NOT_JSON:
        raise _refuse(_pos(file, node), f"unsupported YAML value ({tag.removeprefix(_CORE)}): "
                      + _NOT_JSON[tag].split(": ")[0], _NOT_JSON[tag].split(": ", 1)[-1])
    allowed = (_SCALAR_TAGS | {_CORE + "merge"} if isinstance(node, yaml.ScalarNode)
               else {_CORE + "seq"} if isinstance(node, yaml.SequenceNode) else {_CORE + "map"})
    if tag not in allowed:
        raise _refuse(_pos(file, node), f"unsupported YAML tag {tag!r}",
                      "recipes hold JSON-like data only: mappings, lists, strings, numbers, booleans, null")


def _is_merge(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _CORE + "merge"


def _walk(node: yaml.Node, path: tuple, file: str, out: dict[tuple, Position], problems: list[Diagnostic]) -> None:
    if isinstance(node, yaml.MappingNode):
        merged = [value for key_node, value in node.value if _is_merge(key_node)]
        for value in reversed(merged):  # as safe_load: earlier merges and explicit keys win
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in reversed(sources):
                if isinstance(source, yaml.MappingNode):
                    _walk_pairs(source, path, file, out, problems, check_duplicates=False)
        _walk_pairs(node, path, file, out, problems, check_duplicates=True)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[path + (index,)] = _pos(file, item)
            _walk(item, path + (index,), file, out, problems)


def _walk_pairs(node: yaml.MappingNode, path: tuple, file: str, out: dict[tuple, Position],
                problems: list[Diagnostic], check_duplicates: bool) -> None:
    seen: set[Any] = set()
    for key_node, value_node in node.value:
        if _is_merge(key_node):
            continue
        key = _scalar_key(key_node) if isinstance(key_node, yaml.ScalarNode) else key_node.start_mark.index
        if check_duplicates and key in seen:
            problems.append(Diagnostic(_pos(file, key_node), f"duplicate key {key!r}",
                                       "remove one of the two entries"))
        seen.add(key)
        if path + (key,) in out:  # an explicit key replaces a merged one, with everything under it
            _drop_under(out, path + (key,))
        out[path + (key,)] = _pos(file, key_node)
        _walk(value_node, path + (key,), file, out, problems)


def _drop_under(out: dict[tuple, Position], prefix: tuple) -> None:
    for stale in [k for k in out if k[: len(prefix)] == prefix and len(k) > len(prefix)]:
        del out[stale]


def _scalar_key(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node)
    finally:
        loader.dispose()
