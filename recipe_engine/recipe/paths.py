"""Paths a recipe names inside the run directory, and the default run-directory name.

A recipe is data from a possibly untrusted source, so nothing it names may land outside the
run directory (``--out``): artifact paths are relative, without ``..`` or hidden components,
not a directory, and not one of the files the run writes itself. These helpers are pure (no
file system access): the same text gives the same answer everywhere.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import PurePosixPath

# files a run writes itself in the run directory (an export must not overwrite them)
RESERVED_NAMES = ("recipe.lock.yaml", "recipe.tuned.lock.yaml", "model.pt", "metrics.json", "report.md",
                  "qat_checkpoint.pt", "qat_best.pt", "qat_log.jsonl", "hist_*.png", "report.html",
                  "layer_sqnr.png", "tune.png")
_MAX_COMPONENT = 255
_UNSAFE_DIR_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def safe_relative_path(text: object, *, reserved: bool = True) -> PurePosixPath:
    """``text`` as a normalised path inside the run directory; ``ValueError`` saying why it is not.

    Refused: non-strings, empty text, ``.``, absolute paths (``/x``, ``~/x``, ``C:/x``), any ``..``
    or hidden (``.name``) component, backslashes, NUL, a trailing ``/`` (a directory), components
    over 255 characters and (``reserved=True``) the names in :data:`RESERVED_NAMES`.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a file name, got {text!r}")
    if not text.strip():
        raise ValueError("the path is empty: give a file name such as 'model.onnx'")
    if "\x00" in text or "\\" in text:
        raise ValueError(f"{text!r} contains a backslash or NUL: write '/'-separated file names")
    if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text):
        raise ValueError(f"{text!r} is absolute: artifact paths are relative to the run directory (--out)")
    if text.endswith("/"):
        raise ValueError(f"{text!r} names a directory: give a file name inside it")
    path = PurePosixPath(text)
    parts = path.parts
    if not parts or str(path) == ".":
        raise ValueError(f"{text!r} is the run directory itself: give a file name such as 'model.onnx'")
    for part in parts:
        if part == "..":
            raise ValueError(f"{text!r} leaves the run directory ('..'): artifacts are written inside --out")
        if part.startswith("."):
            raise ValueError(f"{text!r} has a hidden component {part!r}: names starting with '.' are the engine's")
        if len(part) > _MAX_COMPONENT:
            raise ValueError(f"{text!r} has a component longer than {_MAX_COMPONENT} characters")
    if reserved and len(parts) == 1 and any(fnmatch.fnmatchcase(parts[0], r) for r in RESERVED_NAMES):
        raise ValueError(f"{text!r} is a file the run writes itself ({', '.join(RESERVED_NAMES)}): choose "
                         "another name")
    return path


def path_conflicts(paths: list[PurePosixPath]) -> list[tuple[int, str]]:
    """(index, message) for each path that repeats an earlier one or is a directory of another."""
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for index, path in enumerate(paths):
        key = str(path)
        if key in seen:
            problems.append((index, f"export path {key!r} is used twice (also export[{seen[key]}])"))
            continue
        for other, earlier in seen.items():
            other_path = PurePosixPath(other)
            if other_path in path.parents or path in other_path.parents:
                outer, inner = (other, key) if other_path in path.parents else (key, other)
                problems.append((index, f"export path {key!r} conflicts with export[{earlier}] ({other!r}): "
                                 f"{outer!r} would be both a file and the directory of {inner!r}"))
        seen[key] = index
    return problems


def safe_dir_name(recipe_name: str) -> str:
    """A recipe name made safe as one directory name (the default run directory ``runs/<name>``).

    Separators and characters outside ``[A-Za-z0-9_.-]`` become ``_``; leading dots are dropped,
    so ``..``, ``a/../b`` or ``/etc`` can never name a parent, an absolute or a hidden directory.
    An empty result becomes ``run``.
    """
    name = _UNSAFE_DIR_CHARS.sub("_", str(recipe_name)).lstrip(".")
    name = name[:100]
    return name if name.strip("._") else "run"
