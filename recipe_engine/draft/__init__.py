"""``recipe init``: draft a commented starter recipe from a model, its data and one traced batch.

:mod:`.trace` records one forward's dataflow; :mod:`.fusions`, :mod:`.quantize` and
:mod:`.exports` turn it into recipe entries, each with the reasons it is there; :mod:`.writer`
lays them out as commented YAML; :mod:`.build` writes the file and checks it with ``recipe plan``.
"""

from .build import DraftResult, draft_recipe
from .start import start_from_file, start_from_options

__all__ = ["DraftResult", "draft_recipe", "start_from_file", "start_from_options"]
