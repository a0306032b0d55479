"""`recipe init` with bad input: located errors (FILE:LINE:COL or the option), a hint, no traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipe_engine.cli import main

DIGITS = "recipe_engine.zoo.digits"


@pytest.fixture
def usercode(tmp_path: Path, monkeypatch):
    (tmp_path / "my_broken.py").write_text(textwrap.dedent("""
        import torch

        def build():
            raise ValueError("no weights for this size")

        def tiny():
            return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()

        def batches():
            return [torch.randn(2, 1, 8, 8)]

        def bad_forward(model, batch):
            return model(batch["image"])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _init(*args: str):
    result = CliRunner().invoke(main, ["init", *args])
    assert "Traceback" not in result.output, result.output
    return result


def test_unknown_factory_is_located_at_the_option(usercode: Path) -> None:
    result = _init("--model", f"{DIGITS}:buld", "--data", f"{DIGITS}:calibration_data", "-o", "d.yaml")
    assert result.exit_code == 1
    assert result.output.startswith("--model:1:1: model.factory: ")
    assert "has no attribute 'buld'" in result.output
    assert not (usercode / "d.yaml").exists()


def test_factory_that_raises_is_located_with_the_users_frame(usercode: Path) -> None:
    result = _init("--model", "my_broken:build", "--data", "my_broken:batches", "-o", "d.yaml")
    assert result.exit_code == 1
    assert "--model:1:1: model.factory: my_broken:build raised ValueError: no weights for this size" in result.output
    assert "my_broken.py:5 in build" in result.output


def test_forward_that_raises_is_located_at_forward(usercode: Path) -> None:
    result = _init("--model", "my_broken:tiny", "--data", "my_broken:batches", "--forward", "my_broken:bad_forward",
                   "-o", "d.yaml")
    assert result.exit_code == 1
    assert "--forward:1:1: data.forward: my_broken:bad_forward raised IndexError" in result.output


def test_bad_start_file_is_located_at_its_line(usercode: Path) -> None:
    (usercode / "start.yaml").write_text(f"model:\n  factory: {DIGITS}:nope\ndata:\n  calibration: "
                                         f"{{factory: {DIGITS}:calibration_data}}\n")
    result = _init("start.yaml", "-o", "d.yaml")
    assert result.exit_code == 1
    assert f"{usercode / 'start.yaml'}:2:3: model.factory: " in result.output
    (usercode / "start2.yaml").write_text(f"model: {{factory: {DIGITS}:build}}\n")
    result = _init("start2.yaml", "-o", "d.yaml")
    assert result.exit_code == 1 and "data: missing" in result.output


def test_bad_kwargs_and_existing_output(usercode: Path) -> None:
    result = _init("--model", f"{DIGITS}:build", "--model-kwargs", "{pretrained: true}", "--data", "x:y")
    assert result.exit_code == 1 and "--model-kwargs: not JSON" in result.output
    result = _init("--model", f"{DIGITS}:build", "--model-kwargs", '{"width": "wide"}', "--data",
                   f"{DIGITS}:calibration_data", "-o", "d.yaml")
    assert result.exit_code == 1 and result.output.startswith("--model:1:1: model.factory:")
    (usercode / "d.yaml").write_text("keep me")
    result = _init("--model", f"{DIGITS}:build", "--data", f"{DIGITS}:calibration_data", "-o", "d.yaml")
    assert result.exit_code == 1 and "d.yaml exists" in result.output
    assert (usercode / "d.yaml").read_text() == "keep me"


def test_tiny_model_draft_passes_plan(usercode: Path) -> None:
    result = _init("--model", "my_broken:tiny", "--data", "my_broken:batches", "-o", "d.yaml", "--explain")
    assert result.exit_code == 0, result.output
    assert "fuse: 1 entries" in result.output and "pattern: [Conv2d, BatchNorm2d]" in result.output
    assert "wrote d.yaml: 1 fuse entry (1 fusion)" in result.output
    plan = CliRunner().invoke(main, ["plan", "d.yaml"])
    assert plan.exit_code == 0, plan.output
