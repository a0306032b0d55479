"""``load_quantized`` with a model that does not fit the file's recipe: the error names the model
file (not the temporary file the lock is read from) and says which model to pass."""

from __future__ import annotations

import re

import pytest
import torch

import recipe_engine as re8
from recipe_engine.recipe.errors import RecipeError
from recipe_engine.zoo.digits import build, calibration_data


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    recipe = re8.load_recipe("recipes/digits_int8.yaml", overrides=["calibration.batches=1", "export=[]"])
    model = re8.prepare(build(pretrained=True), recipe, calibration_data(count=1))
    path = tmp_path_factory.mktemp("saved") / "model.pt"
    re8.save_quantized(model, path, recipe)
    return path


@pytest.mark.parametrize("other", ["another model", "the same model, already quantized"])
def test_a_model_that_does_not_fit_names_the_file_and_the_fix(saved, other) -> None:
    if other == "another model":
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    else:
        model = re8.load_quantized(saved, model=build(pretrained=True))
    with pytest.raises(RecipeError) as caught:
        re8.load_quantized(saved, model=model)
    text = str(caught.value)
    assert re.match(rf"{re.escape(str(saved))} \(its recipe lock\):\d+:\d+: ", text), text
    assert ".lock.yaml" not in text and "tmp" not in text.replace(str(saved), "")
    assert "pass the FP32 model it was saved from" in text
    assert "optional: true" not in text  # the recipe's own fix does not apply to a file's lock


def test_saving_onto_a_directory_is_a_recipe_error_and_leaves_nothing(saved, tmp_path) -> None:
    model = re8.load_quantized(saved, model=build(pretrained=True))
    recipe = re8.load_recipe("recipes/digits_int8.yaml")
    with pytest.raises(RecipeError, match="it is a directory") as info:
        re8.save_quantized(model, tmp_path, recipe)  # was a raw IsADirectoryError after writing a temp file
    assert f"{tmp_path / 'model.pt'}" in str(info.value)
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")]
