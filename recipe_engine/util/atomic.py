"""Atomic file writes, the one place through which every file of a run is written.

``atomic_path`` writes to a temporary file next to the target and renames it into place, so a crash
never leaves a half-written file. Temporary files are created with mode 0666 minus the user's
umask, so outputs get the permissions any other tool would give them.

Inside ``confined(root)`` (``recipe run`` holds it around the whole run) a target that does not
resolve to a file strictly inside ``root`` is refused with a RecipeError: whatever a recipe names,
no artifact of a run is written outside its run directory. A full disk, a read-only file system
or a missing permission becomes a RecipeError naming the file instead of a traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from ..recipe.errors import RecipeError

_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("recipe_engine_write_root", default=None)
TEMP_SUFFIX = ".tmp"
_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


@contextlib.contextmanager
def confined(root: str | os.PathLike) -> Iterator[Path]:
    """Refuse every atomic write outside ``root`` while the block runs."""
    resolved = Path(root).resolve()
    token = _ROOT.set(resolved)
    try:
        yield resolved
    finally:
        _ROOT.reset(token)


def check_inside(target: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """``target`` if it resolves to a path strictly inside ``root`` (default: the confined root)."""
    base = Path(root).resolve() if root is not None else _ROOT.get()
    path = Path(target)
    if base is None:
        return path
    resolved = (base / path).resolve() if not path.is_absolute() else path.resolve()
    if resolved == base or base not in resolved.parents:
        raise RecipeError(f"refusing to write {target}: it is outside the run directory {base}",
                          hint="artifact paths must be relative paths inside the run directory, e.g. model.onnx")
    if resolved.is_dir():
        raise RecipeError(f"refusing to write {target}: it is a directory", hint="name a file, e.g. model.onnx")
    return path


def disk_error(exc: BaseException, target: str | os.PathLike) -> RecipeError | None:
    """A RecipeError for a write that failed because of the disk (full, read-only, no permission)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        return RecipeError(f"cannot write {target}: {_DISK_ERRORS[exc.errno]} ({exc.strerror})",
                           hint="free some space or choose another --out directory")
    if isinstance(exc, RuntimeError) and "write failed" in str(exc):  # torch.save reports ENOSPC like this
        return RecipeError(f"cannot write {target}: the write failed (is the disk full?): {str(exc).splitlines()[0]}",
                           hint="free some space or choose another --out directory")
    return None


def _create_temp(target: Path) -> Path:
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise RecipeError(f"cannot create a temporary file next to {target}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds."""
    target = check_inside(target)
    if target.is_dir():
        raise RecipeError(f"cannot write {target}: it is a directory",
                          hint=f"give the path of a file, e.g. {target / ('model' + (target.suffix or '.pt'))}")
    tmp_path: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temp(target)
        yield tmp_path
        os.replace(tmp_path, target)
    except (OSError, RuntimeError) as exc:
        problem = disk_error(exc, target)
        if problem is None:
            raise
        raise problem from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_save(target: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and rename the result onto ``target`` (e.g. torch.save, onnx.save)."""
    with atomic_path(target) as tmp:
        writer(tmp)
