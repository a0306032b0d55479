"""Safe YAML parsing that also records where every key and list item sits in the file."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import Diagnostic, Position, RecipeError


def _pos(file: str, node: yaml.Node) -> Position:
    return Position(file, node.start_mark.line + 1, node.start_mark.column + 1)


def parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple, Position]]:
    """Parse ``text`` with safe_load semantics; return the data and a path -> position map.

    Duplicate keys are errors (PyYAML would silently keep the last one).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader: data only
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


def _walk(node: yaml.Node, path: tuple, file: str, out: dict[tuple, Position], problems: list[Diagnostic]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = _scalar_key(key_node) if isinstance(key_node, yaml.ScalarNode) else key_node.start_mark.index
            if key in seen:
                problems.append(Diagnostic(_pos(file, key_node), f"duplicate key {key!r}",
                                           "remove one of the two entries"))
            seen.add(key)
            out[path + (key,)] = _pos(file, key_node)
            _walk(value_node, path + (key,), file, out, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[path + (index,)] = _pos(file, item)
            _walk(item, path + (index,), file, out, problems)


def _scalar_key(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node)
    finally:
        loader.dispose()
