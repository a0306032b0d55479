"""Sandboxed Jinja2 templating of recipe values.

Templates are rendered per string value after YAML parsing, so a recipe is valid YAML
before rendering and every error points at the exact value. A value that is exactly one
expression (``"{{ calib_batches }}"``) keeps the expression's native type (an int stays an
int); any other template renders to a string. The context holds the recipe's ``vars`` and
``env``, a read-only view of the process environment (``{{ env.HOME }}``,
``{{ env.get('DATA_ROOT', '/data') }}``). Undefined names are errors, and the sandbox
refuses attribute walks into Python internals.

Values read with ``env`` are recorded in the lock like any other value. ``secret('NAME')``
reads an environment variable whose value is used at run time but never recorded: see
:mod:`.secrets`.

Templates cannot exhaust the machine (see :mod:`.template_limits`): numbers, repetitions,
ranges, widths and the render time are bounded, and ``lipsum``/``cycler``/``joiner`` are
not available.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, UndefinedError
from jinja2.exceptions import SecurityError

from .errors import Diagnostic, Position, dotted, nearest_position
from .secrets import SecretReader
from .template_limits import BoundedSandbox, TemplateLimitError

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.S)
_ENV = BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def is_template(value: Any) -> bool:
    """True when a string value contains Jinja2 syntax."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def render_value(value: str, context: Mapping[str, Any]) -> Any:
    """Render one string value; a lone ``{{ expr }}`` returns the expression's native value."""
    match = _SINGLE_EXPRESSION.match(value)
    if match:
        result = _ENV.compile_expression(match["expr"], undefined_to_none=False)(**context)
        if isinstance(result, Undefined):
            result._fail_with_undefined_error()
        return result
    return _ENV.from_string(value).render(**context)


def template_context(variables: Mapping[str, Any], secrets: SecretReader | None = None) -> dict[str, Any]:
    """The names a recipe template can see: its vars, a read-only ``env`` and ``secret(NAME)``."""
    reader = secrets if secrets is not None else SecretReader()
    return {**variables, "vars": MappingProxyType(dict(variables)), "env": MappingProxyType(dict(os.environ)),
            "secret": reader}


def render_tree(data: Any, context: Mapping[str, Any], positions: Mapping[tuple, Position],
                default: Position, path: tuple = ()) -> tuple[Any, list[Diagnostic]]:
    """Render every templated string in ``data``; collect diagnostics instead of stopping at the first."""
    problems: list[Diagnostic] = []
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], found = render_tree(value, context, positions, default, path + (key,))
            problems += found
        return out, problems
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            rendered, found = render_tree(value, context, positions, default, path + (index,))
            items.append(rendered)
            problems += found
        return items, problems
    if not is_template(data):
        return data, problems
    where = nearest_position(positions, path, default)
    reader = context.get("secret")
    calls = reader.calls if isinstance(reader, SecretReader) else 0
    try:
        value = render_value(data, context)
        if isinstance(reader, SecretReader):
            reader.note(path, value, called=reader.calls > calls)
        return value, problems
    except UndefinedError as exc:
        names = [k for k in context if k not in ("env", "vars", "secret")]
        missing = re.findall(r"'([^']+)' is undefined", str(exc))
        close = difflib.get_close_matches(missing[0], names, n=1) if missing else []
        hint = f"did you mean {close[0]!r}?" if close else \
            f"define it under `vars:` or pass --set vars.{missing[0] if missing else 'NAME'}=VALUE"
        problems.append(Diagnostic(where, f"{dotted(path)}: undefined template variable: {exc}", hint))
    except TemplateLimitError as exc:
        problems.append(Diagnostic(where, f"{dotted(path)}: template refused: {exc}",
                                   "templates compute small configuration values; this one is too costly"))
    except SecurityError as exc:
        problems.append(Diagnostic(where, f"{dotted(path)}: template refused by the sandbox: {exc}",
                                   "templates may only read vars and env; they cannot reach Python internals"))
    except TemplateError as exc:
        problems.append(Diagnostic(where, f"{dotted(path)}: template error: {exc}"))
    except Exception as exc:  # noqa: BLE001 - any failure inside a user expression is the user's
        problems.append(Diagnostic(where, f"{dotted(path)}: template expression failed: {exc}"))
    return data, problems
