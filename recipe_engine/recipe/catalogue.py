"""The recipe catalogue: every recipe file under a directory, with name, version and description."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import RecipeError
from .loader import RECIPE_SUFFIXES, catalogue_dirs, load_recipe


@dataclass
class CatalogueEntry:
    name: str
    version: str
    description: str
    file: str
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def scan(directory: Path | None = None) -> list[CatalogueEntry]:
    """Load every recipe under ``directory`` (default: the catalogue directories), sorted by name."""
    roots = [directory] if directory is not None else catalogue_dirs(Path.cwd())
    entries: list[CatalogueEntry] = []
    for root in roots:
        if not root.is_dir():
            raise RecipeError(f"{root}: not a directory")
        for path in sorted(p for p in root.rglob("*") if p.suffix in RECIPE_SUFFIXES):
            try:
                spec = load_recipe(path).spec
                entries.append(CatalogueEntry(spec.recipe, spec.version, spec.description, str(path)))
            except RecipeError as exc:
                if _only_unnamed(exc):  # a base file: valid to extend, not to run
                    entries.append(CatalogueEntry(path.stem, "-", "(base: no recipe/version of its own; extend it)",
                                                  str(path)))
                    continue
                real = [d.message for d in exc.diagnostics if not _unnamed(d.message)]
                entries.append(CatalogueEntry(path.stem, "?", "(invalid)", str(path), (real or [exc.headline])[0]))
    return sorted(entries, key=lambda e: (e.name, e.file))


_UNNAMED = {"<root>: missing required key 'recipe'", "<root>: missing required key 'version'"}


def _unnamed(message: str) -> bool:
    return message in _UNNAMED or "a recipe that is run must name itself" in message


def _only_unnamed(exc: RecipeError) -> bool:
    """True when the file's only problems are a missing ``recipe:``/``version:`` (a base file)."""
    return bool(exc.diagnostics) and all(_unnamed(d.message) for d in exc.diagnostics)
