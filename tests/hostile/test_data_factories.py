"""Data factories (and ``batches=``) that return something other than a list of batches: a located
error naming what came back, before any stage reads it (a generator used to be used up by op-site
discovery, leaving calibration one batch short and the layer-SQNR stage a StopIteration traceback)."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from click.testing import CliRunner

import recipe_engine as re8
from recipe_engine.cli import main
from recipe_engine.recipe.errors import RecipeError
from recipe_engine.recipe.loader import load_recipe_data
from tests.helpers import build_dense, dense_batches
from tests.hostile.common import RECIPE, no_traceback, write_recipe

HERE = "tests.hostile.test_data_factories"


def generator_data(count: int = 3):
    return (batch for batch in dense_batches(count))


def one_batch(count: int = 3):
    return {"image": dense_batches(1)[0]}


def one_tensor(count: int = 3):
    return dense_batches(1)[0]


def no_batches(count: int = 3):
    return []


def nothing(count: int = 3):
    return None


CASES = {
    "generator_data": "returned a generator, which can be read only once",
    "one_batch": "returned a dict (one batch?)",
    "one_tensor": "returned a Tensor (one batch?)",
    "no_batches": "returned an empty sequence (no batches)",
    "nothing": "returned None, not a list of batches",
}


@pytest.mark.parametrize("factory", sorted(CASES))
def test_calibration_factory_result_is_checked_where_the_recipe_names_it(tmp_path, factory) -> None:
    recipe = copy.deepcopy(RECIPE)
    recipe["data"]["calibration"] = {"factory": f"{HERE}:{factory}"}
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path, recipe)), "--out", str(out)])
    assert result.exit_code == 1, result.output
    no_traceback(result.output)
    assert re.search(r"hostile\.yaml:\d+:\d+: data\.calibration\.factory: " + re.escape(f"{HERE}:{factory} "
                     + CASES[factory]), result.output), result.output
    assert "hint: " in result.output
    assert not out.exists()


def test_train_data_may_be_a_generator() -> None:
    """QAT reads data.train as a stream (qat.steps), so a generator stays allowed there."""
    from recipe_engine.data import batches_problem

    assert batches_problem((b for b in dense_batches(2)), reread=False) is None
    assert batches_problem((b for b in dense_batches(2)), reread=True) is not None
    assert batches_problem(torch.utils.data.DataLoader(torch.randn(4, 3, 8, 8), batch_size=2)) is None


def _recipe():
    return load_recipe_data(copy.deepcopy(RECIPE))


@pytest.mark.parametrize("batches, fragment", [
    (lambda: (b for b in dense_batches(3)), "batches= is a generator, which can be read only once"),
    (lambda: dense_batches(1)[0], "batches= is a Tensor (one batch?)"),
    (lambda: [], "batches= is an empty sequence"),
])
def test_prepare_refuses_batches_it_cannot_read_twice(batches, fragment) -> None:
    with pytest.raises(RecipeError, match=re.escape(fragment)):
        re8.prepare(build_dense(), _recipe(), batches())


def test_calibrate_alone_reads_a_generator_once_and_sees_every_batch() -> None:
    recipe = _recipe()
    model = build_dense()
    re8.apply(model, recipe, dense_batches(1))
    result = re8.calibrate(model, recipe, (b for b in dense_batches(3)), show_progress=False)
    assert result.batches == 3
