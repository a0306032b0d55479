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
                entries.append(CatalogueEntry(path.stem, "?", "(invalid)", str(path), exc.headline))
    return sorted(entries, key=lambda e: (e.name, e.file))
