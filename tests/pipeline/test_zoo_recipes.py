"""The shipped recipes end to end on the trained zoo models: INT8 accuracy close to FP32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipe_engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "recipe_engine" / "zoo" / "checkpoints"


def _run(recipe: str, out: Path, *overrides: str) -> dict:
    args = ["run", str(ROOT / "recipes" / recipe), "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.skipif(not (CHECKPOINTS / "centerpoint.pt").exists(), reason="zoo checkpoint missing")
def test_centerpoint_int8_within_two_map_points(tmp_path) -> None:
    metrics = _run("centerpoint_int8.yaml", tmp_path, "vars.calib_batches=4")
    drop = metrics["fp32"]["mAP"] - metrics["int8"]["mAP"]
    print(f"centerpoint fp32 {metrics['fp32']['mAP']:.2f} int8 {metrics['int8']['mAP']:.2f} drop {drop:.2f}")
    assert metrics["fp32"]["mAP"] >= 40.0
    assert drop <= 2.0
    assert metrics["disabled"] == 6 and metrics["fused"] == 30  # conv1.0's conv1 input and add: one quantizer
    assert metrics["shared_groups"] == 9  # the BEV concat + one tie per SparseBasicBlock (an int8 chain)
    assert metrics["quantizers"] > 50


@pytest.mark.skipif(not (CHECKPOINTS / "digits.pt").exists(), reason="zoo checkpoint missing")
def test_digits_int8_within_one_point(tmp_path) -> None:
    metrics = _run("digits_int8.yaml", tmp_path)
    assert metrics["fp32"]["top1"] >= 95.0
    assert metrics["fp32"]["top1"] - metrics["int8"]["top1"] <= 1.0


@pytest.mark.skipif(not (CHECKPOINTS / "bevfusion.pt").exists(), reason="zoo checkpoint missing")
def test_bevfusion_int8_within_two_map_points(tmp_path) -> None:
    metrics = _run("bevfusion_int8.yaml", tmp_path, "vars.calib_batches=4")
    drop = metrics["fp32"]["mAP"] - metrics["int8"]["mAP"]
    assert metrics["fp32"]["mAP"] >= 40.0
    assert drop <= 2.0
    assert metrics["shared_groups"] == 14  # 3 Bottleneck ties + FPN, fuser and decoder concats + 8 lidar blocks
    assert {e["path"]: e["status"] for e in metrics["exports"]} == {
        "lidar_scn.onnx": "ok", "camera.onnx": "ok", "fusion_bev.onnx": "ok", "fusion_bev.engine": "skipped"}
