"""Calling the user's code (factories, forward, evaluate): its errors become located RecipeErrors.

An exception raised by code a recipe names is reported at the recipe key that names it
(``FILE:LINE:COL: data.forward: ...``) with the frames of the traceback that lie in the user's
code; the engine's, torch's and the standard library's frames are hidden (``recipe --debug``
shows them all). An exception whose innermost frame is in the engine itself is an engine bug
and is left alone.
"""

from __future__ import annotations

import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..recipe.errors import RecipeError

_ENGINE = Path(__file__).resolve().parent.parent
_USER_INSIDE_ENGINE = (_ENGINE / "zoo",)  # the zoo's models and data are user code like any other
_HIDDEN = tuple({Path(p).resolve() for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])})
MAX_FRAMES = 6


def _library_dirs() -> list[Path]:
    """torch and pytorch-quantization: the quantized layers there are the engine's, not the user's."""
    import importlib.util

    found = []
    for name in ("torch", "pytorch_quantization"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            found.append(Path(spec.origin).resolve().parent)
    return found


def _is_engine(path: Path) -> bool:
    return _ENGINE in path.parents and not any(d == path or d in path.parents for d in _USER_INSIDE_ENGINE)


def _is_hidden(path: Path) -> bool:
    if _is_engine(path):
        return True
    if any(d in path.parents for d in _library_dirs()):
        return True
    return any(d in path.parents for d in _HIDDEN) and "site-packages" not in path.parts


def user_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The frames of ``exc``'s traceback in the user's code (the last one if none is)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return [traceback.FrameSummary(exc.filename, exc.lineno or 0, "<module>", line=(exc.text or "").strip())]
    mine = [f for f in frames if not _is_hidden(Path(f.filename).resolve())]
    return (mine or frames[-1:])[-MAX_FRAMES:]


def is_engine_error(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is in the engine (a bug to report, not the user's error)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and _is_engine(Path(frames[-1].filename).resolve())


def describe(exc: BaseException) -> str:
    """``ValueError: message`` plus the user's frames, most recent call last."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, SyntaxError):
        text = f"SyntaxError: {exc.msg}"
    lines = [text, "  in your code (most recent call last):"]
    for frame in user_frames(exc):
        lines.append(f"    {frame.filename}:{frame.lineno} in {frame.name}" + (f": {frame.line}" if frame.line else ""))
    return "\n".join(lines)


def located(loaded: Any, key: tuple, exc: BaseException, what: str) -> RecipeError:
    """A RecipeError at recipe ``key`` for ``exc`` raised by the user's ``what`` (e.g. ``mod:build``)."""
    if isinstance(exc, RecipeError):
        if exc.diagnostics or loaded is None:
            return exc
        return loaded.error(key, exc.headline, hint=exc.hint)
    message = f"{what} raised {describe(exc)}"
    hint = "fix the error in your code (recipe --debug run ... shows the full traceback)"
    return loaded.error(key, message, hint=hint) if loaded is not None else RecipeError(message, hint=hint)


def call_user(loaded: Any, key: tuple, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; an exception from the user's code becomes a RecipeError at ``key``."""
    try:
        return fn(*args, **kwargs)
    except RecipeError as exc:
        raise located(loaded, key, exc, what) from exc
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        if is_engine_error(exc):
            raise
        raise located(loaded, key, exc, what) from exc
