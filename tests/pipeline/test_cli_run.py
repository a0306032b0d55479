"""`recipe run` and `recipe plan` end to end on a small real model (run directory contract)."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from recipe_engine.cli import main

RECIPE = {
    "recipe": "tiny-int8", "version": "1.2.3",
    "model": {"factory": "tests.helpers:build_dense"},
    "data": {"calibration": {"factory": "tests.helpers:dense_batches", "kwargs": {"count": 3}},
             "validation": {"factory": "tests.helpers:dense_batches", "kwargs": {"count": 2, "seed": 9}},
             "evaluate": "tests.helpers:output_energy"},
    "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d|ConvTranspose2d", "BatchNorm2d", "ReLU"]}],
    "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}},
              {"select": {"type": "tests.helpers:TinyDenseNet"}, "ops": {"cat": "act"}}],
    "share": [["cat0", "head.input"]],
    "disable": ["lateral"],
    "calibration": {"method": "entropy", "batches": 2},
}


def _write(tmp_path, data=RECIPE):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_writes_the_run_directory(tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(_write(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("recipe", "version", "sha256", "quantizers", "disabled", "calibration_seconds", "fp32", "int8",
                "exports"):
        assert key in metrics, key
    assert metrics["recipe"] == "tiny-int8" and metrics["version"] == "1.2.3"
    assert metrics["calibration_batches"] == 2
    # stem, up, lateral, head: input+weight each; cat0 shared with head.input -> 8 objects, lateral's 2 disabled
    assert metrics["quantizers"] == 6 and metrics["disabled"] == 2 and metrics["shared_groups"] == 1
    assert metrics["fused"] == 2
    assert metrics["fp32"]["energy"] != metrics["int8"]["energy"]
    lock = (out / "recipe.lock.yaml").read_text()
    assert f"# sha256: {metrics['sha256']}" in lock
    assert (out / "model.pt").is_file()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_plan_lists_selections_without_writing(tmp_path) -> None:
    path = _write(tmp_path)
    before = set(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["rules"][0]["matches"] == ["stem.0", "up.0", "lateral", "head"]
    assert plan["shares"] == [["cat0", "head.input"]]
    assert plan["disabled"] == ["lateral.input", "lateral.weight"]
    assert [f["modules"] for f in plan["fusions"]] == [["stem.0", "stem.1"], ["up.0", "up.1"]]
    assert "tests.helpers:build_dense" in plan["factories"]
    assert set(tmp_path.rglob("*")) == before
    text = CliRunner().invoke(main, ["plan", str(path)])
    assert text.exit_code == 0 and "share groups:" in text.output and "cat0 = head.input" in text.output


def test_run_with_selector_that_matches_nothing_is_a_clean_error(tmp_path) -> None:
    bad = dict(RECIPE, rules=[{"select": {"name": "stme.*"}, "quantize": {"input": "act"}}])
    result = CliRunner().invoke(main, ["run", str(_write(tmp_path, bad)), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "rules[0].select" in result.output and "selects nothing" in result.output and "stem.0" in result.output
    assert "Traceback" not in result.output


def test_report_links_existing_images_and_matches_metrics(tmp_path) -> None:
    import re

    out = tmp_path / "run"
    assert CliRunner().invoke(main, ["run", str(_write(tmp_path)), "--out", str(out)]).exit_code == 0
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert images and all((out / image).is_file() for image in images)
    assert f"| quantizers enabled | {metrics['quantizers']} |" in report
    fp32, int8 = metrics["fp32"]["energy"], metrics["int8"]["energy"]
    assert f"| energy | {fp32:.4g} | {int8:.4g} | {fp32 - int8:+.4g} |" in report
    assert "| lateral.input | input | no |" in report
