"""`recipe init` whose draft cannot pass `recipe plan`: no draft is left behind, and a file replaced
with --force is put back as it was."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from recipe_engine import pipeline
from recipe_engine.cli import main
from recipe_engine.recipe.errors import RecipeError

DIGITS = "recipe_engine.zoo.digits"
ARGS = ["init", "--model", f"{DIGITS}:build", "--data", f"{DIGITS}:calibration_data", "--data-kwargs", '{"count": 1}',
        "--forward", f"{DIGITS}:forward_batch"]


@pytest.fixture
def plan_fails(monkeypatch):
    def fail(loaded):
        raise RecipeError("the plan broke in a way no entry explains")
    monkeypatch.setattr(pipeline, "plan_recipe", fail)


@pytest.mark.parametrize("existing", [None, b"# my own notes\r\nrecipe: mine\n"])
def test_a_draft_that_fails_plan_leaves_no_file(tmp_path, plan_fails, existing) -> None:
    out = tmp_path / "draft.yaml"
    if existing is not None:
        out.write_bytes(existing)
    result = CliRunner().invoke(main, [*ARGS, "-o", str(out), *(["--force"] if existing else [])])
    assert result.exit_code == 1, result.output
    assert "the draft does not pass `recipe plan`" in result.output and "Traceback" not in result.output
    assert (out.read_bytes() == existing) if existing is not None else not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["draft.yaml"] if existing else [])
