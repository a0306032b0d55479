"""docs/own_model.md: every command in it runs, in order, and prints what the page shows."""

from __future__ import annotations

from pathlib import Path

from .tutorial import ROOT, problems, run_all

PAGE = ROOT / "docs" / "own_model.md"


def test_every_command_of_the_own_model_page_runs_and_prints_what_it_shows(tmp_path: Path) -> None:
    ran = run_all(tmp_path, path=PAGE)
    assert len(ran) >= 7
    found = problems(ran, tmp_path, path=PAGE)
    assert not found, "\n".join(found)
    assert {p.name for p in (tmp_path / "det_export").glob("*.onnx")} == {
        "backbone_3d_scn.onnx", "backbone_2d.onnx", "dense_head.onnx"}
    assert not (tmp_path / "runs" / "typo").exists() and not (tmp_path / "runs" / "gen").exists()  # failed: records only
