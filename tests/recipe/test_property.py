"""Random mutations of a valid recipe either load or raise RecipeError, never anything else."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipe_engine.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "recipes" / "centerpoint_int8.yaml").read_text())
BASE.pop("extends")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["{{ calib_batches }}", "{{ nope }}", "{%", "re:(",
                                                           "max", "mse", "histogram", "act", "1.0.0"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


ALL_PATHS = [p for p in _paths(BASE) if p]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ALL_PATHS), value=values, delete=st.booleans())
def test_mutations_load_or_raise_recipe_error(path, value, delete) -> None:
    data = copy.deepcopy(BASE)
    node = data
    for part in path[:-1]:
        node = node[part]
    if delete and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "mutant.yaml"
        target.write_text(yaml.safe_dump(data), encoding="utf-8")
        try:
            load_recipe(target)
        except RecipeError as exc:
            assert exc.format()  # a message, never an empty error
