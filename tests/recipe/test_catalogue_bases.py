"""`recipe list` over a user's directory: a base file (no recipe/version of its own) is a base, not
"invalid"; an invalid file's line names the file and its real error."""

from __future__ import annotations

from click.testing import CliRunner

from recipe_engine.cli import main


def test_bases_are_listed_as_bases_and_invalid_files_name_themselves(tmp_path) -> None:
    (tmp_path / "common.yaml").write_text("quantizers:\n  act: {num_bits: 8}\n")
    (tmp_path / "middle.yaml").write_text("extends: common.yaml\ncalibration: {batches: 2}\n")
    (tmp_path / "mine.yaml").write_text("recipe: mine\nversion: 0.1.0\nextends: middle.yaml\n")
    (tmp_path / "broken.yaml").write_text("quantizers:\n  act: {calibrator: histgram}\n")
    result = CliRunner().invoke(main, ["list", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line and not line.startswith("invalid")}
    assert "(base: no recipe/version of its own; extend it)" in rows["common"]
    assert "(base: no recipe/version of its own; extend it)" in rows["middle"]
    assert "0.1.0" in rows["mine"] and "(invalid)" in rows["broken"]
    invalid = [line for line in result.output.splitlines() if line.startswith("invalid:")]
    assert invalid == [f"invalid: {tmp_path / 'broken.yaml'}: quantizers.act.calibrator: Input should be 'max' or "
                       "'histogram' (got 'histgram')"], result.output
