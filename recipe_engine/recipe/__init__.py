"""The recipe language: schema, loader (YAML + extends + templates + --set), lock."""

from .errors import Diagnostic, Position, RecipeError
from .loader import LoadedRecipe, catalogue_dirs, find_recipe, load_recipe, load_recipe_data
from .lock import canonical_data, lock_text, recipe_sha256
from .schema import Recipe

__all__ = [
    "Diagnostic", "LoadedRecipe", "Position", "Recipe", "RecipeError", "canonical_data", "catalogue_dirs",
    "find_recipe", "load_recipe", "load_recipe_data", "lock_text", "recipe_sha256",
]
