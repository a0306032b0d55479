"""Selector semantics: glob vs regex vs type vs under, exclusion, ordering, no-match errors."""

from __future__ import annotations

import pytest
from torch import nn

from recipe_engine.quant.apply import plan_quantization
from recipe_engine.recipe import RecipeError, load_recipe_data
from recipe_engine.select import match_name, select
from tests.helpers import TinyDenseNet, TinySparseNet


@pytest.mark.parametrize("pattern,name,expected", [
    ("stem.*", "stem.0", True),
    ("stem.*", "stem.0.weight", False),  # * does not cross dots
    ("stem.**", "stem.0.weight", True),
    ("re:stem\\.\\d", "stem.0", True),
    ("re:stem", "stem.0", False),  # regexes match in full
    ("layer[12].0", "layer2.0", True),
    ("layer?.0", "layer10.0", False),
])
def test_name_patterns(pattern: str, name: str, expected: bool) -> None:
    assert match_name(pattern, name) is expected


def test_type_under_and_exclude() -> None:
    model = TinyDenseNet()
    assert [m.name for m in select(model, _sel(type="Conv2d"))] == \
        ["stem.0", "lateral", "head"]
    assert [m.name for m in select(model, _sel(type="torch.nn:ConvTranspose2d"))] == ["up.0"]
    assert [m.name for m in select(model, _sel(type="Conv2d", under="stem"))] == ["stem.0"]
    assert [m.name for m in select(model, _sel(type="Conv2d", exclude="head"))] == ["stem.0", "lateral"]
    assert [m.name for m in select(model, _sel(type=["BatchNorm2d", "ReLU"], under="up"))] == ["up.1", "up.2"]


def test_subclasses_match_unless_exact() -> None:
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(1, 1, 1), nn.Conv2d(1, 1, 1))
    assert len(select(model, _sel(type="Conv2d"))) == 2
    assert [m.name for m in select(model, _sel(type="Conv2d", exact=True))] == ["1"]


def test_spconv_short_names() -> None:
    model = TinySparseNet()
    assert [m.name for m in select(model, _sel(type="SparseConv"))] == ["stem.0", "block.conv1", "block.conv2",
                                                                       "down.0"]
    assert [m.name for m in select(model, _sel(type="spconv.SparseConv3d"))] == ["down.0"]


def test_no_match_error_names_nearest_modules() -> None:
    with pytest.raises(RecipeError) as info:
        select(TinyDenseNet(), _sel(name="stme.*"), what="rules[0].select")
    text = str(info.value)
    assert "rules[0].select" in text and "selects nothing" in text and "stem.0" in text
    assert select(TinyDenseNet(), _sel(name="nothing", optional=True)) == []


def test_unknown_type_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="cannot import"):
        select(TinyDenseNet(), _sel(type="nowhere.module:Thing"))


def test_later_rules_override_and_quantize_false_removes() -> None:
    recipe = load_recipe_data({
        "recipe": "t", "version": "1.0.0",
        "quantizers": {"a": {"num_bits": 8}, "b": {"num_bits": 4}},
        "rules": [
            {"select": {"type": "Conv2d"}, "quantize": {"input": "a", "weight": "a"}},
            {"select": "head", "quantize": {"input": "b"}},
            {"select": "lateral", "quantize": False},
        ],
    }).spec
    plan = plan_quantization(TinyDenseNet(), recipe)
    assert set(plan.modules) == {"stem.0", "head"}
    assert plan.modules["head"].input.num_bits == 4 and plan.modules["head"].weight is None
    assert plan.modules["stem.0"].rule == 0


def _sel(**kwargs):
    from recipe_engine.recipe.schema import Selector

    return Selector(**kwargs)
