"""Sensitivity ranking and accuracy-driven tuning on the digits model with one broken layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipe_engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (ROOT / "recipe_engine/zoo/checkpoints/digits.pt").exists(),
                                reason="zoo checkpoint missing")

# block2.conv2's input gets a fixed, far too small amax: its activations are clipped hard
BROKEN = ["quantizers.broken={amax: 0.05}",
          "rules+=[{select: block2.conv2, quantize: {input: broken, weight: w_channel}}]",
          "export=[]"]


def _broken_recipe(tmp_path: Path, extra: str = "") -> Path:
    text = (ROOT / "recipes" / "digits_int8.yaml").read_text()
    text = text.replace("extends: base/int8_tensorrt.yaml", f"extends: {ROOT / 'recipes/base/int8_tensorrt.yaml'}")
    path = tmp_path / "digits_broken.yaml"
    path.write_text(text + extra)
    return path


def _overrides() -> list[str]:
    args = []
    for item in BROKEN:
        args += ["--set", item]
    return args


def test_sensitivity_ranks_the_broken_layer_first_and_derived_recipe_recovers(tmp_path) -> None:
    recipe = _broken_recipe(tmp_path)
    out = tmp_path / "sens"
    result = CliRunner().invoke(main, ["sensitivity", str(recipe), "--out", str(out), "--max-drop", "1.0",
                                       *_overrides()])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "sensitivity.json").read_text())
    assert table["groups"][0]["group"] == "block2.conv2"
    assert table["int8"] < table["fp32"] - 5.0  # the broken layer really hurts
    assert table["precision"] == "INT8" and f"FP32 {table['fp32']:.4g}, INT8 {table['int8']:.4g}" in result.output
    assert table["derived"]["success"] and table["derived"]["disabled_groups"] == ["block2.conv2"]
    for name in ("sensitivity.csv", "sensitivity.png", "derived.yaml"):
        assert (out / name).is_file()
    # the derived recipe, run fresh, recovers the metric
    run = CliRunner().invoke(main, ["run", str(out / "derived.yaml"), "--out", str(tmp_path / "run"), *_overrides()])
    assert run.exit_code == 0, run.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fp32"]["top1"] - metrics["int8"]["top1"] <= 1.0


def test_tune_stops_within_budget_and_its_drop_is_reproducible(tmp_path) -> None:
    recipe = _broken_recipe(tmp_path, "\ntune: {metric: top1, max_drop: 1.0, budget: 30}\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), *_overrides()])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    tune = metrics["tune"]
    assert tune["success"] and tune["drop"] <= 1.0 and tune["evaluations"] <= 30
    assert "block2.conv2" in tune["disabled_groups"]
    assert metrics["int8"]["top1"] == pytest.approx(tune["final"])
    # the report shows the search: its figures and the plot (tune.png beside report.md, embedded in report.html)
    page = (out / "report.html").read_text()
    assert '<h2 id="tune">Tune</h2>' in page and "block2.conv2" in page.split('id="tune"')[1].split("<h2")[0]
    assert 'alt="Tune search" src="data:image/png;base64,' in page
    assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![tune](tune.png)" in \
        (out / "report.md").read_text()
    # a fresh run of the tuned lock reproduces the reported metric
    again = CliRunner().invoke(main, ["run", str(out / "recipe.tuned.lock.yaml"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    fresh = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert fresh["int8"]["top1"] == pytest.approx(tune["final"])


def test_per_layer_sqnr_shows_where_the_error_enters(tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(_broken_recipe(tmp_path)), "--out", str(out), *_overrides()])
    assert result.exit_code == 0, result.output
    layers = {item["name"]: item for item in json.loads((out / "metrics.json").read_text())["layer_sqnr"]}
    broken = layers["block2.conv2"]
    entry = max((i for i in layers.values() if i["loss_db"] is not None), key=lambda i: i["loss_db"])
    assert entry["name"] == "block2.conv2" and broken["loss_db"] > 10.0
    assert broken["output_db"] < 15.0 < 25.0 < broken["input_db"]  # clean before it, broken from it on
    assert all(i["output_db"] > 25.0 for i in layers.values() if i["index"] < broken["index"] and i["output_db"])
    assert layers["fc"]["output_db"] < 20.0  # and it reaches the output
    assert "Largest losses inside one layer: block2.conv2" in (out / "report.md").read_text()
