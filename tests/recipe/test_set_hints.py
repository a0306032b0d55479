"""`--set` mistakes: the message says what to write instead."""

from __future__ import annotations

import pytest

from recipe_engine.recipe.errors import RecipeError
from recipe_engine.recipe.merge import apply_override

DATA = {"rules": [{"select": {"type": "Conv2d"}}], "disable": ["a"], "calibration": {"batches": 4}}


@pytest.mark.parametrize("text, message, hint", [
    ("rules.x.select=1", "'rules' is not a mapping", "name its items by index, e.g. --set rules.0.select=..."),
    ("disable+=b", "'+=' appends a list to a list", "--set 'disable+=[b]'"),
    ("calibration+=[1]", "'+=' appends a list to a list", "'calibration' is not a list: use = to replace it"),
])
def test_set_mistakes_get_a_hint(text, message, hint) -> None:
    with pytest.raises(RecipeError) as info:
        apply_override({k: (list(v) if isinstance(v, list) else dict(v)) for k, v in DATA.items()}, {}, text)
    assert message in info.value.headline and hint in (info.value.hint or ""), str(info.value)


def test_bad_yaml_in_set_is_one_location_and_one_hint() -> None:
    with pytest.raises(RecipeError) as info:
        apply_override(dict(DATA), {}, "disable=[a, b")
    text = str(info.value)
    assert text.count("hint:") == 1, text  # the parser's own hint (indentation, colons) does not apply here
    assert "value is not valid YAML: --set disable:2:1: malformed YAML: did not find expected ',' or ']'" in text
