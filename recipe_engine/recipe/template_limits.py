"""Bounds on what a recipe template may compute, so ``recipe validate`` of hostile input stays fast.

Jinja's sandbox stops attribute walks into Python internals but not denial of service:
``9 ** (9 ** 9)``, ``'A' * 3000000000``, ``lipsum(n=200000)`` or ``'x'|center(10**9)`` each run
for minutes or exhaust memory. :class:`BoundedSandbox` refuses them before they run:

- ``**`` and ``*`` on numbers: results above ``MAX_INT_BITS`` bits are refused;
- ``*`` repeating a string or list: results above ``MAX_ITEMS`` items are refused;
- string and list methods and the sizing filters (center, indent, wordwrap, truncate, batch,
  slice): numeric arguments above ``MAX_ITEMS`` are refused (``range`` is already capped by
  the sandbox), and so are format strings with a width or precision of 6 digits or more
  (``'%0999999999d' % 1``, ``'{:>999999}'.format(x)``);
- ``lipsum``, ``cycler`` and ``joiner`` are not available.

Loops are Python code and are bounded in time instead: :func:`render_budget` interrupts
template rendering that runs longer than ``RENDER_SECONDS`` in total (main thread only,
where signals can be delivered; library calls from other threads rely on the bounds above).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import signal
import threading
import time
from collections.abc import Iterator
from numbers import Number
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_INT_BITS = 4096
MAX_ITEMS = 100_000
RENDER_SECONDS = 1.0
_WIDE_FORMAT = re.compile(r"\d{6,}|%[^a-zA-Z%]*\*")


class TemplateLimitError(Exception):
    """A template asked for more work than a configuration value can need."""


def _check_number(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Number):
        return
    if isinstance(value, float) and not math.isfinite(value):
        return
    if abs(value) > MAX_ITEMS:  # type: ignore[arg-type]
        raise TemplateLimitError(f"{what}: argument {value!r} is larger than {MAX_ITEMS}")


def _check_format(text: Any) -> None:
    if isinstance(text, str) and _WIDE_FORMAT.search(text) and ("%" in text or "{" in text):
        raise TemplateLimitError(f"format string {text[:40]!r} asks for a width or precision of 6 digits or more")


def _int_bits(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0.0
    return float(abs(value).bit_length())


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
        if right * math.log2(abs(left)) > MAX_INT_BITS:
            raise TemplateLimitError(f"{left!r} ** {right!r} has more than {MAX_INT_BITS} bits")
    elif operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and not isinstance(count, bool):
                if len(seq) * count > MAX_ITEMS:
                    raise TemplateLimitError(f"repetition of {len(seq)} items x {count} is larger than {MAX_ITEMS}")
        if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
            raise TemplateLimitError(f"product has more than {MAX_INT_BITS} bits")
    elif operator == "%":
        _check_format(left)


_SIZED_FILTERS = {"center", "indent", "wordwrap", "truncate", "batch", "slice"}


def _bounded_filter(name: str, func: Any) -> Any:
    if name not in _SIZED_FILTERS and name != "format":
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if name == "format":
            for value in args[:1]:
                _check_format(value)
        else:
            for value in (*args[1:], *kwargs.values()):
                _check_number(value, f"filter {name!r}")
        return func(*args, **kwargs)

    return wrapper


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with bounded arithmetic, repetition, call arguments and no lipsum."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        for name in ("lipsum", "cycler", "joiner"):
            self.globals.pop(name, None)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja's API
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes, list, tuple)):  # 'x'.center(10**9), 'x'.zfill(...), ...
            for value in (*args, *kwargs.values()):
                _check_number(value, f"{type(owner).__name__}.{getattr(__obj, '__name__', '?')}()")
            if getattr(__obj, "__name__", "") in ("format", "format_map"):
                _check_format(owner)
        return super().call(__context, __obj, *args, **kwargs)


@contextlib.contextmanager
def render_budget(seconds: float = RENDER_SECONDS) -> Iterator[None]:
    """Interrupt template rendering inside the block once it has run ``seconds`` (main thread only)."""
    usable = (threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
              and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))
    if not usable:
        yield
        return
    deadline = time.monotonic() + seconds

    def expired(signum: int, frame: Any) -> None:
        if time.monotonic() >= deadline:
            raise TemplateLimitError(f"templates took longer than {seconds:g} s to render")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
        signal.signal(signal.SIGALRM, previous)
