"""A non-finite metric (``evaluate`` returning NaN) is written as ``null``: metrics.json and ``recipe run
--json`` parse with a strict JSON parser, and the run warns once, naming each figure."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from click.testing import CliRunner

from recipe_engine.cli import main
from recipe_engine.util.jsonio import json_text, non_finite
from tests.helpers import output_energy

RECIPE = {
    "recipe": "nan-metric", "version": "1.0.0",
    "model": {"factory": "tests.helpers:build_dense"},
    "data": {"calibration": {"factory": "tests.helpers:dense_batches", "kwargs": {"count": 2}},
             "evaluate": "tests.pipeline.test_strict_json:nan_evaluate"},
    "quantizers": {"act": {}, "w": {"per_channel": True}},
    "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}}],
    "calibration": {"method": "max", "batches": 2},
}


def nan_evaluate(model, batches) -> dict[str, float]:
    return {"x": float("nan"), **output_energy(model, batches)}


def strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_text_writes_non_finite_numbers_as_null() -> None:
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (2, "nan"), "e": 0.5}
    assert strict(json_text(value)) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "nan"], "e": 0.5}
    assert [p for p, _ in non_finite(value)] == ["a", "b[1]", "b[2].c"]
    with pytest.raises(ValueError, match="NaN"):
        strict(json.dumps(value))  # what the engine wrote before


def test_nan_metric_gives_strict_metrics_json_and_one_warning(tmp_path) -> None:
    path, out = tmp_path / "nan.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(RECIPE))
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = strict((out / "metrics.json").read_text())
    assert metrics["fp32"]["x"] is None and metrics["int8"]["x"] is None
    assert metrics["fp32"]["energy"] > 0 and metrics["int8"]["energy"] > 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: not finite, written as null in metrics.json: fp32.x (nan), int8.x (nan)"]

    as_json = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "again"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert strict(as_json.stdout)["int8"]["x"] is None
