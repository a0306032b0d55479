"""``secret('NAME')``: read an environment variable into a recipe without recording its value.

``{{ env.TOKEN }}`` is an ordinary value: it is written to ``recipe.lock.yaml``, into
``model.pt`` (which stores the lock) and into the report. ``{{ secret('TOKEN') }}`` gives
the same string to the run (factories receive the real value), but every place the engine
records the recipe -- the lock, the sha256, ``recipe diff``, ``model.pt`` -- shows
``<secret:TOKEN>`` instead. A value is redacted when its template called ``secret()``, or
when it is a template whose result contains the value of a secret read earlier (a var
holding a secret, used elsewhere).

What the hash means: ``sha256`` is the hash of the recipe as recorded, so it covers the
*name* of each secret, not its value. Two runs that differ only in a secret's value have
the same hash. That is deliberate: a rotated credential must not change the recipe's
identity (or break automatic QAT resume), and a hash over the value would let anyone who
holds the lock confirm a guessed secret offline. If a secret changes behaviour (not just
access), pass it with ``env`` instead so that the lock records it.

Secrets are strings; a secret converted inside the template (``secret('N') | int``) is
recorded as ``<secret:N>`` as a whole.
"""

from __future__ import annotations

import os
from typing import Any

Redactions = dict[tuple, tuple[tuple[str, str], ...]]


class SecretError(Exception):
    """A secret that cannot be read (unset or empty variable, bad name)."""


class SecretReader:
    """The ``secret`` template function of one recipe load; remembers what it read and where it went."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.calls = 0
        self.redactions: Redactions = {}

    def __call__(self, name: Any) -> str:
        self.calls += 1
        if not isinstance(name, str) or not name:
            raise SecretError(f"secret() needs the name of an environment variable, got {name!r}")
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"environment variable {name!r} is not set (read with secret())")
        if not value:
            raise SecretError(f"environment variable {name!r} is empty (read with secret())")
        self.values[name] = value
        return value

    def note(self, path: tuple, value: Any, called: bool) -> None:
        """Record that the templated value at ``path`` holds a secret (if it does)."""
        held = tuple((n, v) for n, v in self.values.items() if isinstance(value, str) and v in value)
        if called and not held:
            held = tuple(self.values.items())
        if held:
            self.redactions[path] = held


def redact(data: Any, redactions: Redactions) -> Any:
    """``data`` (plain JSON-like) with the secret values at ``redactions`` replaced by ``<secret:NAME>``."""
    for path, held in redactions.items():
        node = data
        for part in path[:-1]:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = None
                break
        last = path[-1] if path else None
        if node is None or not (isinstance(node, dict) and last in node
                                or isinstance(node, list) and isinstance(last, int) and last < len(node)):
            continue
        value = node[last]
        if isinstance(value, str):
            for name, secret in sorted(held, key=lambda item: -len(item[1])):
                value = value.replace(secret, f"<secret:{name}>")
            if not any(f"<secret:{name}>" in value for name, _ in held):
                value = "<secret:" + ",".join(name for name, _ in held) + ">"
        else:
            value = "<secret:" + ",".join(name for name, _ in held) + ">"
        node[last] = value
    return data
