"""Exports inside `recipe run`: files in the run directory, metadata, metrics.json `exports`."""

from __future__ import annotations

import json

import onnx

from recipe_engine.export.artifact import read_metadata
from recipe_engine.pipeline import run_recipe
from recipe_engine.recipe.loader import load_recipe

RECIPE = """
recipe: pipeline-export
version: 2.0.1
model: {factory: "tests.export.models:build_sparse"}
data:
  calibration: {factory: "tests.export.models:voxel_batches"}
  forward: "tests.export.models:forward_batch"
quantizers:
  act: {calibrator: max}      # (histogram plots in report.md are slow; not what this test is about)
  w: {per_channel: true}
fuse:
  - pattern: [SubMConv3d|SparseConv3d, BatchNorm1d, ReLU]
    within: {name: "encoder.*", exclude: encoder.conv_input}
  - block: "tests.export.models:SparseBlock"
  - pattern: [SubMConv3d, BatchNorm1d, ReLU]
    within: encoder.conv_input
    phase: before_export
rules:
  - select: {type: [SubMConv3d, SparseConv3d, SparseInverseConv3d]}
    quantize: {input: act, weight: w}
  - select: {type: Conv2d}
    quantize: {input: act, weight: w}
  - select: {type: "tests.export.models:SparseBlock"}
    ops: {add: act}
disable: [encoder.conv_input]
calibration: {method: max}
export:
  - {format: onnx-sparse, module: encoder, path: scn.onnx, allow_fp16_to_int8: true}   # untied block quantizers
  - {format: onnx-qdq, module: bev, path: bev.onnx, dynamic_axes: {input: {0: batch}}}
  - {format: tensorrt, source: bev.onnx, path: bev.engine}
"""


def test_run_writes_verified_artifacts(write, tmp_path) -> None:
    loaded = load_recipe(write("r.yaml", RECIPE))
    out = tmp_path / "run"
    metrics = run_recipe(loaded, out, show_progress=False)
    on_disk = json.loads((out / "metrics.json").read_text())
    exports = on_disk["exports"]
    assert [e["path"] for e in exports] == ["scn.onnx", "bev.onnx", "bev.engine"]
    assert exports == json.loads(json.dumps(metrics["exports"]))
    for entry in exports[:2]:
        assert entry["status"] == "ok" and isinstance(entry["max_abs_diff"], float)
        meta = read_metadata(onnx.load(out / entry["path"]))
        assert (meta["recipe"], meta["version"], meta["sha256"]) == ("pipeline-export", "2.0.1", loaded.sha256)
    assert exports[2]["status"] in ("skipped", "ok")
    assert "export_seconds" in on_disk["timings"]
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    # conv_input was folded for export only (phase before_export): ReLU fused, fp16, its calibrated input range
    scn = onnx.load(out / "scn.onnx")
    stem = next(n for n in scn.graph.node if n.name == "encoder.conv_input.0")
    values = {a.name: onnx.helper.get_attribute_value(a) for a in stem.attribute}
    assert values["activation"] == b"ReLU" and values["precision"] == b"fp16"
    assert values["input_dynamic_range"] == metrics["amax"]["encoder.conv_input.0.input"]["amax_max"]
    # the recipe ties no quantizers: the int8 layers reading fp16 are written because the export allows it, and noted
    allowed = [n for n in exports[0]["notes"] if "allowed by allow_fp16_to_int8" in n]
    assert [n.split(":")[0] for n in allowed] == ["encoder.block.conv1", "encoder.block.add0", "encoder.down.0"]
