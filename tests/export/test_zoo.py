"""Exports of the reference zoo models from their shipped recipes (small calibration sets)."""

from __future__ import annotations

import onnx

from recipe_engine.export.runner import export
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from tests.export.models import prepared_zoo_recipe as _prepared


def test_digits_qdq(tmp_path) -> None:
    loaded, model, batches, forward = _prepared("digits_int8", [
        "calibration.batches=2",
        "export=[{format: onnx-qdq, path: digits.onnx, dynamic_axes: {x: {0: batch}}}]"])
    (result,) = export(model, loaded, tmp_path, batches, forward)
    assert result["status"] == "ok" and result["max_diff_steps"] <= 4 and result["frac_over_1_step"] <= 0.05
    assert result["inputs"] == {"x": [64, 1, 16, 16]}
    weights = [names for names, q in get_state(model).unique() if names[0].endswith(".weight") and backend.is_enabled(q)]
    assert result["per_channel_weights"] == len(weights)
    onnx.checker.check_model(onnx.load(tmp_path / "digits.onnx"), full_check=True)


def test_centerpoint_encoder_and_bev(tmp_path) -> None:
    loaded, model, batches, forward = _prepared("centerpoint_int8", [
        "data.calibration.kwargs.count=1", "data.calibration.kwargs.batch_size=1", "calibration.batches=1",
        "calibration.method=max",
        "export=[{format: onnx-sparse, module: encoder, path: scn.onnx},"
        " {format: onnx-sparse, module: encoder, path: scn_xyz.onnx, layout: xyz, source_layout: zyx},"
        " {format: onnx-qdq, module: bev, path: bev.onnx}]"])
    scn, scn_xyz, bev = export(model, loaded, tmp_path, batches, forward)
    assert scn["seconds"] > 0 and scn_xyz["module"] == "encoder"
    for result in (scn, scn_xyz):
        assert result["status"] == "ok" and result["rel_error"] <= 0.05
        assert result["convs"] == 21 and result["int8_convs"] == 18  # conv_input and conv1.0 are disabled
    assert scn["output_matches_model_layout"] and scn["output_axes"] == ["N,C,z,y,x"]
    assert scn_xyz["output_axes"] == ["N,C,z,x,y"]  # libspconv's xyz Transpose: BEV rows/columns swap
    assert bev["status"] == "ok" and bev["max_diff_steps"] <= 4 and bev["module"] == "bev"
    assert bev["per_channel_axes"] == [{"axis": 0, "consumers": ["Conv"]}, {"axis": 1, "consumers": ["ConvTranspose"]}]
