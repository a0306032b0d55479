"""The mistakes a newcomer makes naming their code: each gets a hint that says what to write.

A module in the current directory (the ``recipe`` command does not put it on the path), a
misspelt module or function, a file path instead of an import path, and ``(inputs, labels)``
batches passed to the model by the default forward."""

from __future__ import annotations

import copy
import os
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from recipe_engine.cli import main
from tests.helpers import build_dense
from tests.hostile.common import RECIPE, no_traceback, write_recipe

HERE = "tests.hostile.test_reference_hints"


def labelled_batches(count: int = 3):
    """What a torch DataLoader over a TensorDataset(images, labels) yields."""
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 3, 8, 8, generator=generator), torch.tensor([0, 1])) for _ in range(count)]


def _run(tmp_path, **changes):
    recipe = copy.deepcopy(RECIPE)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            recipe[section][field] = value
        else:
            recipe[section] = value
    result = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    no_traceback(result.output)
    return result.output


def test_a_module_in_the_current_directory_gets_the_pythonpath_hint(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_detector.py").write_text(textwrap.dedent("""
        def build():
            raise AssertionError("never imported")
    """))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path), os.getcwd())])
    monkeypatch.chdir(tmp_path)
    output = _run(tmp_path, model__factory="my_detector:build")
    assert "model.factory: 'my_detector:build': cannot import 'my_detector'" in output
    assert "my_detector.py is in the current directory" in output and "export PYTHONPATH=$PWD" in output


def test_a_misspelt_module_gets_did_you_mean(tmp_path) -> None:
    output = _run(tmp_path, model__factory="tests.hostile.usercod:broken_factory")
    assert "hint: did you mean 'tests.hostile.usercode'?" in output


def test_a_misspelt_function_gets_did_you_mean_among_what_the_module_defines(tmp_path) -> None:
    output = _run(tmp_path, model__factory="tests.hostile.usercode:broken_factroy")
    assert "has no attribute 'broken_factroy'" in output
    assert "hint: did you mean 'broken_factory'" in output
    hint = output.split("hint:", 1)[1]
    assert "torch" not in hint.split("defined there:", 1)[1]  # imported modules are not offered


def test_a_file_path_gets_the_import_path(tmp_path) -> None:
    output = _run(tmp_path, model__factory="tests/hostile/usercode.py:broken_factory")
    assert "did you mean 'tests.hostile.usercode:broken_factory'?" in output


def test_labelled_batches_without_forward_say_that_data_forward_is_the_fix(tmp_path) -> None:
    output = _run(tmp_path, data__calibration={"factory": f"{HERE}:labelled_batches"},
                  data__validation={"factory": f"{HERE}:labelled_batches"}, data__evaluate=None)
    assert "data.calibration: model(batch) raised TypeError:" in output
    assert "(the batch is a tuple of 2)" in output
    assert "model(*batch) when it is a tuple or list" in output and "set data.forward" in output


class _Picky(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = build_dense()

    def forward(self, x):
        self.net(x)
        return len(5)  # a TypeError inside forward: the user's code, not the call


def picky():
    return _Picky()


def test_a_type_error_inside_the_model_is_still_shown_in_the_users_code(tmp_path) -> None:
    output = _run(tmp_path, model={"factory": f"{HERE}:picky"})
    assert "TypeError: object of type 'int' has no len()" in output
    assert "test_reference_hints.py" in output and "set data.forward" not in output


@pytest.mark.parametrize("value, expected", [("mydet/model.py:build", "mydet.model:build"),
                                             ("./mydet/model.py:build", "mydet.model:build"),
                                             ("mydet.model.build", "mydet.model:build")])
def test_callable_suggestions(value, expected) -> None:
    from recipe_engine.recipe.validators import _callable_suggestion

    assert _callable_suggestion(value) == expected


def test_a_misspelt_catalogue_name_in_extends_gets_did_you_mean(tmp_path) -> None:
    (tmp_path / "mine.yaml").write_text("recipe: mine\nversion: 0.1.0\nextends: base/int8_tensorrtt.yaml\n")
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "mine.yaml")])
    assert result.exit_code == 1
    no_traceback(result.output)
    assert "mine.yaml:3:1: extends: cannot find parent recipe 'base/int8_tensorrtt.yaml'" in result.output
    assert "hint: did you mean 'base/int8_tensorrt.yaml'?" in result.output


@pytest.mark.parametrize("extra, expected", [
    ("model: {factory: tests.helpers:build_dense, seed: 3}",
     "model.seed: unknown key 'seed'\n    hint: keyword arguments go under `kwargs:` (e.g. kwargs: {seed: 3})"),
    ("data: {calibration: {factory: tests.helpers:dense_batches, count: 4}}",
     "data.calibration.count: unknown key 'count'\n    hint: keyword arguments go under `kwargs:` "
     "(e.g. kwargs: {count: 4}); allowed keys: factory, kwargs"),
    ("qat: {steps: 2, optimizer: {name: AdamW, lr: 0.001}}",
     "qat.optimizer.lr: unknown key 'lr'\n    hint: keyword arguments go under `kwargs:` (e.g. kwargs: {lr: 0.001})"),
    ("qat: {steps: 2, schedule: {name: cosine, warmup: 3}}", "hint: did you mean 'warmup_steps'?"),
])
def test_an_argument_written_beside_the_factory_says_it_goes_under_kwargs(tmp_path, extra, expected) -> None:
    """Nested sections (data.calibration, qat.optimizer) used to get no hint at all."""
    (tmp_path / "k.yaml").write_text(f"recipe: k\nversion: 0.1.0\n{extra}\n")
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "k.yaml")])
    assert result.exit_code == 1
    no_traceback(result.output)
    assert expected in result.output, result.output


def test_a_misspelt_factory_kwarg_gets_did_you_mean_and_the_parameters(tmp_path) -> None:
    output = _run(tmp_path, model={"factory": "tests.helpers:build_dense", "kwargs": {"sed": 3}})
    assert "model.kwargs: tests.helpers:build_dense rejected its kwargs:" in output
    assert "hint: did you mean 'seed' for 'sed'? it takes: seed" in output


def dict_batches(count: int = 2):
    return [{"batch_dict_image": b} for b in labelled_batches(count)]


class _TakesTheDict(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = build_dense()

    def forward(self, batch_dict):
        return self.net(batch_dict["batch_dict_image"][0])


def takes_the_dict():
    return _TakesTheDict().eval()


def test_a_batch_dict_model_without_forward_is_shown_the_dict_call(tmp_path) -> None:
    output = _run(tmp_path, model={"factory": f"{HERE}:takes_the_dict"},
                  data__calibration={"factory": f"{HERE}:dict_batches"}, data__validation=None, data__evaluate=None)
    assert "got an unexpected keyword argument 'batch_dict_image'" in output
    assert "(the batch is a dict with keys batch_dict_image)" in output
    assert "return model(dict(batch))`" in output
