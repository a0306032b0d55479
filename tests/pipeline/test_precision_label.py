"""The quantized model's numbers are labelled by what its quantizers are (INT8, FP8 E4M3, INT8+FP8 E4M3)
in the run's stage lines, summary table, report.md, report.html and metrics.json (``precision``; the
figures stay under ``int8``)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from click.testing import CliRunner

from recipe_engine.cli import main
from recipe_engine.pipeline import prepare
from recipe_engine.quant.apply import get_state
from recipe_engine.quant.precision import precision_label
from tests.helpers import build_dense, dense_batches

CONVS = {"type": ["Conv2d", "ConvTranspose2d"]}


def tiny(quantizers: dict, rules: list, backend: str = "pytorch-quantization") -> dict:
    return {
        "recipe": "tiny", "version": "1.0.0", "backend": backend,
        "model": {"factory": "tests.helpers:build_dense"},
        "data": {"calibration": {"factory": "tests.helpers:dense_batches", "kwargs": {"count": 2}},
                 "evaluate": "tests.helpers:output_energy"},
        "quantizers": quantizers, "rules": rules, "calibration": {"method": "max", "batches": 2},
    }


INT8 = tiny({"act": {}, "w": {"per_channel": True}}, [{"select": CONVS, "quantize": {"input": "act", "weight": "w"}}])
FP8 = tiny({"fp8": {"format": "fp8_e4m3"}}, [{"select": CONVS, "quantize": {"input": "fp8", "weight": "fp8"}}],
           "modelopt")
MIXED = tiny({"fp8": {"format": "fp8_e4m3"}, "w": {"per_channel": True}},
             [{"select": CONVS, "quantize": {"input": "fp8", "weight": "w"}}], "modelopt")


def _label(recipe: dict) -> str:
    model = build_dense()
    prepare(model, {k: v for k, v in recipe.items() if k not in ("model", "data")}, dense_batches(2))
    return precision_label(get_state(model))


def test_labels_follow_the_enabled_quantizers() -> None:
    assert _label(INT8) == "INT8"
    four = tiny({"act": {"num_bits": 4}}, [{"select": CONVS, "quantize": {"input": "act"}}])
    assert _label(four) == "INT4"
    pytest.importorskip("modelopt.torch.quantization")
    assert _label(FP8) == "FP8 E4M3"
    assert _label(MIXED) == "INT8+FP8 E4M3"


@pytest.mark.parametrize("recipe, label", [(INT8, "INT8"), (MIXED, "INT8+FP8 E4M3")])
def test_run_outputs_name_the_precision(tmp_path, recipe, label) -> None:
    if recipe["backend"] == "modelopt":
        pytest.importorskip("modelopt.torch.quantization")
    path, out = tmp_path / "tiny.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == label and set(metrics["int8"]) == {"energy"}  # figures keep their key
    stages = [re.split(r"\s{2,}", line)[0] for line in result.stderr.splitlines() if not line.startswith(" ")]
    assert f"{label} evaluation" in stages
    rows = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    assert ["metric", "FP32", label, "drop"] in rows
    report = (out / "report.md").read_text()
    assert f"| metric | FP32 | {label} | drop |" in report and f"| precision | {label} |" in report
    assert f"/ {label} {metrics['int8']['energy']:.4g}" in (out / "report.html").read_text()
    if label != "INT8":
        assert "INT8 evaluation" not in stages and "| INT8 |" not in report
