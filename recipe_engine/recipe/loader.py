"""Load a recipe: YAML -> extends chain -> --set overrides -> templates -> schema validation.

Every problem becomes a :class:`Diagnostic` pointing at ``FILE:LINE:COL`` of the key that
caused it, in whichever file of the ``extends`` chain defined it.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import Diagnostic, Position, RecipeError, dotted, nearest_position
from .hints import diagnostics_from_validation
from .lock import recipe_sha256
from .merge import Positions, apply_override, deep_merge
from .schema import Recipe
from .secrets import Redactions, SecretReader
from .template import render_tree, template_context
from .template_limits import TemplateLimitError, render_budget
from .yaml_source import MAX_BYTES, parse_yaml

RECIPE_SUFFIXES = (".yaml", ".yml")
SECRET_SECTIONS = (("vars",), ("model",), ("data",))  # where secret() values may go: only into code's arguments


@dataclass
class LoadedRecipe:
    """A validated, fully resolved recipe and where each of its values came from."""

    spec: Recipe
    path: Path
    files: list[Path]
    positions: Positions = field(repr=False)
    overrides: tuple[str, ...] = ()

    @property
    def sha256(self) -> str:
        """Hash of the canonical resolved recipe (stable across key order and formatting)."""
        return recipe_sha256(self.spec)

    def position(self, *path: str | int) -> Position:
        """Where the value at ``path`` (e.g. ``"rules", 2, "select"``) was written."""
        return nearest_position(self.positions, tuple(path), Position(str(self.path)))

    def resolve_path(self, value: str, *key: str | int) -> Path:
        """Resolve a relative file path relative to the file that wrote ``key``."""
        candidate = Path(os.path.expanduser(value))
        if candidate.is_absolute():
            return candidate
        origin = self.position(*key).file
        base = Path(origin).parent if Path(origin).exists() else self.path.parent
        return (base / candidate).resolve()

    @contextlib.contextmanager
    def located(self) -> Iterator[None]:
        """Give RecipeErrors raised inside (selectors, fusions, share groups at model build time) a position.

        An error that has no diagnostics is located at its ``key`` or, failing that, at the
        recipe key its message starts with (``rules[2].select ...``, ``share[0]: ...``).
        """
        try:
            yield
        except RecipeError as exc:
            if exc.diagnostics:
                raise
            key = exc.key if isinstance(exc.key, tuple) and exc.key else _leading_key(exc.headline)
            if not key:
                raise
            raise RecipeError(diagnostics=[Diagnostic(self.position(*key), exc.headline, exc.hint)]) from None

    def error(self, path: tuple, message: str, hint: str | None = None) -> RecipeError:
        """A RecipeError located at ``path`` in the user's files."""
        return RecipeError(diagnostics=[Diagnostic(self.position(*path), f"{dotted(path)}: {message}", hint)])


def _leading_key(message: str) -> tuple:
    """``rules[2].select {...} selects nothing`` -> ``("rules", 2, "select")``; ``()`` unless a recipe key."""
    match = re.match(r"([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*)", message)
    if not match or match[1].split("[")[0].split(".")[0] not in Recipe.model_fields:
        return ()
    return tuple(int(i) if i else n for n, i in re.findall(r"([A-Za-z_]\w*)|\[(\d+)\]", match[1]))


def _close_recipe_names(name: str, dirs: list[Path], limit: int = 500) -> list[str]:
    """Recipe files (``x.yaml``, ``base/x.yaml``) in ``dirs`` whose relative path is close to ``name``."""
    found: list[str] = []
    for folder in dirs:
        for pattern in ("*.yaml", "*/*.yaml"):
            for file in sorted(folder.glob(pattern))[:limit]:
                found.append(file.relative_to(folder).as_posix())
    return difflib.get_close_matches(name.removeprefix("./"), list(dict.fromkeys(found)), n=2, cutoff=0.75)


def catalogue_dirs(start: Path | None = None) -> list[Path]:
    """Directories searched for catalogue names: $RECIPE_PATH, the nearest recipes/ above ``start``, the repo's."""
    dirs: list[Path] = [Path(p) for p in os.environ.get("RECIPE_PATH", "").split(os.pathsep) if p]
    if start is not None:
        for parent in [start, *start.parents]:
            if parent.name == "recipes" and parent.is_dir():
                dirs.append(parent)
                break
            if (parent / "recipes").is_dir():
                dirs.append(parent / "recipes")
                break
    dirs.extend(shipped_recipe_dirs())
    return list(dict.fromkeys(d.resolve() for d in dirs))


SHARE_SUBDIR = Path("share") / "recipe-engine" / "recipes"  # where a wheel puts the shipped recipes (pyproject)


def shipped_recipe_dirs(package_dir: Path | None = None) -> list[Path]:
    """The recipes shipped with the engine: ``recipes/`` of a source checkout, else the installed copy.

    A wheel installs them as data files under ``<prefix>/share/recipe-engine/recipes``; the prefix is
    an ancestor of the package directory (``<venv>/lib/pythonX.Y/site-packages/recipe_engine``, or
    ``<target>/recipe_engine`` for ``pip install --target``) or the interpreter's data path.
    """
    package = (package_dir or Path(__file__).resolve().parents[1]).resolve()
    checkout = package.parent / "recipes"
    if checkout.is_dir():
        return [checkout]
    prefixes = [*package.parents, Path(sysconfig.get_path("data")), Path(sys.prefix)]
    for prefix in dict.fromkeys(prefixes):
        if (prefix / SHARE_SUBDIR).is_dir():
            return [prefix / SHARE_SUBDIR]
    return []


def find_recipe(name: str, relative_to: Path | None = None) -> Path | None:
    """Resolve a recipe reference: a path (relative to ``relative_to``) or a catalogue name."""
    raw = Path(os.path.expanduser(name))
    candidates: list[Path] = []
    if raw.is_absolute():
        candidates.append(raw)
    else:
        if relative_to is not None:
            candidates.append(relative_to / raw)
        candidates.append(Path.cwd() / raw)
        for directory in catalogue_dirs(relative_to):
            candidates.append(directory / raw)
    for candidate in candidates:
        for option in (candidate, *(candidate.with_name(candidate.name + s) for s in RECIPE_SUFFIXES)):
            if option.is_file():
                return option.resolve()
    return None


def _read_document(path: Path) -> tuple[dict, Positions]:
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(diagnostics=[Diagnostic(Position(str(path)), f"recipe file is larger than {MAX_BYTES} "
                                                  "bytes", "a recipe is a short configuration file")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError(diagnostics=[Diagnostic(Position(str(path), line, col), "recipe file is not valid UTF-8 "
                                                  f"(byte {raw[exc.start]:#04x})", "save the file as UTF-8")]) from None
    data, positions = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(diagnostics=[Diagnostic(Position(str(path)), "a recipe must be a YAML mapping",
                                                  "start with 'recipe: NAME' and 'version: 1.0.0'")])
    return data, positions


def _load_chain(path: Path, stack: tuple[Path, ...], files: list[Path]) -> tuple[dict, Positions]:
    """Load ``path`` merged over all its parents (depth-first, in the listed order)."""
    if path in stack:
        cycle = " -> ".join(p.name for p in (*stack[stack.index(path):], path))
        raise RecipeError(f"{stack[-1]}: extends cycle: {cycle}", hint="remove one of the extends links")
    data, positions = _read_document(path)
    parents = data.pop("extends", None)
    if parents is None:
        parents = []
    elif isinstance(parents, str):
        parents = [parents]
    elif not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(diagnostics=[Diagnostic(positions.get(("extends",), Position(str(path))),
                                                  "extends: expected a recipe path or a list of them")])
    if not stack and parents:
        _check_names_itself(path, data, positions)
    merged: dict = {}
    merged_positions: Positions = {}
    for index, parent in enumerate(parents):
        where = positions.get(("extends", index)) or positions.get(("extends",)) or Position(str(path))
        parent_path = find_recipe(parent, path.parent)
        if parent_path is None:
            dirs = list(dict.fromkeys([path.parent, *catalogue_dirs(path.parent)]))
            searched = ", ".join(str(d) for d in dirs)
            close = _close_recipe_names(parent, dirs)
            guess = ("did you mean " + " or ".join(map(repr, close)) + "? ") if close else ""
            raise RecipeError(diagnostics=[Diagnostic(where, f"extends: cannot find parent recipe {parent!r}",
                                                      f"{guess}paths are relative to this file; also searched "
                                                      f"{searched}")])
        parent_data, parent_positions = _load_chain(parent_path, (*stack, path), files)
        merged, merged_positions = deep_merge(merged, merged_positions, parent_data, parent_positions)
    files.append(path)
    positions.pop(("extends",), None)
    return deep_merge(merged, merged_positions, data, positions)


def _check_names_itself(path: Path, data: dict, positions: Positions) -> None:
    """A file that is run (not only used as a base) names itself: a base's name and version are not inherited."""
    missing = [key for key in ("recipe", "version") if key not in data]
    if missing:
        where = positions.get(("extends",)) or Position(str(path))
        keys = " and ".join(repr(k) for k in missing)
        raise RecipeError(diagnostics=[Diagnostic(where, f"missing required key {keys}: a recipe that is run must "
                                                  "name itself (it does not inherit its base's name and version)",
                                                  "add 'recipe: NAME' and 'version: 1.0.0' to this file; a file "
                                                  "without them can only be a base used through `extends`")])


def resolve_document(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, Positions, list[Path]]:
    """Everything but validation: extends, overrides and templates. Returns plain data."""
    body, positions, files, _ = _resolve(path, overrides)
    return body, positions, files


def _resolve(path: str | os.PathLike, overrides: list[str] | tuple[str, ...]) -> tuple[dict, Positions, list[Path],
                                                                                      Redactions]:
    source = find_recipe(str(path))
    if source is None:
        raise RecipeError(f"{path}: no such recipe file", hint="give a path to a .yaml file or a catalogue name "
                          "(see `recipe list`)")
    files: list[Path] = []
    data, positions = _load_chain(source, (), files)
    for text in overrides:
        apply_override(data, positions, text)
    default = Position(str(source))
    variables = data.get("vars") or {}
    if not isinstance(variables, dict):
        raise RecipeError(diagnostics=[Diagnostic(nearest_position(positions, ("vars",), default),
                                                  "vars: expected a mapping of names to values")])
    secrets = SecretReader()
    try:
        with render_budget():
            variables, problems = render_tree(variables, template_context({}, secrets), positions, default, ("vars",))
            body = {k: v for k, v in data.items() if k != "vars"}
            body, more = render_tree(body, template_context(variables, secrets), positions, default)
    except TemplateLimitError as exc:
        raise RecipeError(diagnostics=[Diagnostic(default, f"templates: {exc}",
                                                  "templates compute small configuration values")]) from None
    problems += more
    for where in secrets.redactions:
        if where[:1] not in SECRET_SECTIONS:
            problems.append(Diagnostic(nearest_position(positions, where, default), f"{dotted(where)}: holds a "
                                       "secret() value, which the engine would print (report, logs)",
                                       "pass secrets only to code: model/data kwargs (directly or through vars)"))
    if problems:
        raise RecipeError(diagnostics=problems)
    if variables:
        body["vars"] = variables
    return body, positions, files, secrets.redactions


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Load, resolve and validate a recipe file.

    ``overrides`` are ``KEY=VALUE`` strings as given to ``--set`` (VALUE parsed as YAML),
    applied after ``extends`` merging. Raises :class:`RecipeError` with file:line:col
    diagnostics on any problem.
    """
    data, positions, files, redactions = _resolve(path, overrides)
    source = files[-1]
    default = Position(str(source))
    try:
        spec = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(diagnostics=diagnostics_from_validation(exc, data, positions, default)) from None
    spec._redactions = redactions
    problems = [Diagnostic(nearest_position(positions, loc, default), f"{dotted(loc)}: {message}")
                for loc, message in spec.reference_errors()]
    if problems:
        raise RecipeError(diagnostics=problems)
    return LoadedRecipe(spec=spec, path=source, files=files, positions=positions, overrides=tuple(overrides))


def load_recipe_data(data: dict[str, Any], name: str = "<dict>") -> LoadedRecipe:
    """Validate an in-memory recipe (e.g. built in Python); no extends, no templates."""
    default = Position(name)
    try:
        spec = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(diagnostics=diagnostics_from_validation(exc, data, {}, default)) from None
    problems = [Diagnostic(default, f"{dotted(loc)}: {message}") for loc, message in spec.reference_errors()]
    if problems:
        raise RecipeError(diagnostics=problems)
    return LoadedRecipe(spec=spec, path=Path(name), files=[], positions={})


def as_loaded(recipe: LoadedRecipe | Recipe | str | os.PathLike | dict) -> LoadedRecipe:
    """Accept a loaded recipe, a Recipe model, a path or a plain dict."""
    if isinstance(recipe, LoadedRecipe):
        return recipe
    if isinstance(recipe, Recipe):
        return LoadedRecipe(spec=recipe, path=Path("<python>"), files=[], positions={})
    if isinstance(recipe, dict):
        return load_recipe_data(recipe)
    return load_recipe(recipe)
