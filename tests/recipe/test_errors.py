"""Bad recipes give FILE:LINE:COL diagnostics naming the key, exit 1, and no traceback."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from recipe_engine.cli import main

HEAD = "recipe: demo\nversion: 1.0.0\n"

CASES = {
    "unknown_key": (HEAD + "calibration:\n  metod: mse\n", 4, 3, "unknown key 'metod'", "did you mean 'method'"),
    "wrong_type": (HEAD + "calibration:\n  batches: lots\n", 4, 3, "calibration.batches", "valid integer"),
    "bad_enum": (HEAD + "calibration:\n  method: entrpy\n", 4, 3, "calibration.method", "did you mean 'entropy'"),
    "missing_required": (HEAD + "model:\n  kwargs: {a: 1}\n", 3, 1, "missing required key 'factory'", None),
    "missing_top_level": ("recipe: demo\n", 1, 1, "missing required key 'version'", None),
    "nested_unknown": (HEAD + "rules:\n  - select: {nme: conv1}\n    quantize: {input: {num_bits: 8}}\n",
                       4, 14, "rules[0].select.nme", "did you mean 'name'"),
    "undefined_variable": (HEAD + "vars: {calib_batches: 4}\ncalibration:\n  batches: '{{ calib_batchs }}'\n",
                           5, 3, "undefined template variable", "did you mean 'calib_batches'"),
    "malformed_yaml": (HEAD + "calibration:\n  method: [mse\n", 5, 1, "malformed YAML", None),
    "unknown_quantizer": (HEAD + "rules:\n  - select: conv1\n    quantize: {input: act}\n", 5, 16,
                          "unknown quantizer 'act'", None),
    "bad_semver": ("recipe: demo\nversion: '1.0'\n", 2, 1, "semantic", None),
}


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_recipe_reports_file_line_col(case: str, write) -> None:
    text, line, col, message, hint = CASES[case]
    path = write(f"{case}.yaml", text)
    result = _run("validate", str(path))
    assert result.exit_code == 1, result.output
    output = result.output
    assert f"{path}:{line}:{col}:" in output, output
    assert message in output, output
    if hint:
        assert hint in output, output
    assert "Traceback" not in output


def test_bad_extends_path_points_at_extends(write) -> None:
    path = write("child.yaml", HEAD + "extends: nowhere/missing.yaml\n")
    result = _run("validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:3:1: extends: cannot find parent recipe 'nowhere/missing.yaml'" in result.output


def test_extends_cycle_is_detected(write) -> None:
    write("a.yaml", "recipe: a\nversion: 1.0.0\nextends: b.yaml\n")
    b = write("b.yaml", "recipe: b\nversion: 1.0.0\nextends: a.yaml\n")
    result = _run("validate", str(b))
    assert result.exit_code == 1
    assert "extends cycle: b.yaml -> a.yaml -> b.yaml" in result.output
    assert "Traceback" not in result.output


def test_error_inside_extended_file_points_into_that_file(write) -> None:
    parent = write("base/parent.yaml", "recipe: p\nversion: 1.0.0\nquantizers:\n  act: {num_bitz: 8}\n")
    child = write("child.yaml", "recipe: c\nversion: 1.0.0\nextends: base/parent.yaml\n")
    result = _run("validate", str(child))
    assert result.exit_code == 1
    assert re.search(rf"{re.escape(str(parent))}:4:9: quantizers\.act\.num_bitz: unknown key", result.output)


def test_duplicate_keys_are_errors(write) -> None:
    path = write("dup.yaml", HEAD + "calibration: {method: mse}\ncalibration: {method: max}\n")
    result = _run("validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:4:1: duplicate key 'calibration'" in result.output


def test_debug_flag_shows_traceback(write) -> None:
    path = write("bad.yaml", HEAD + "calibration:\n  metod: mse\n")
    result = _run("--debug", "plan", str(path))
    assert result.exit_code != 0
    assert result.exception is not None  # re-raised instead of being turned into a message


def test_set_override_errors_name_the_override(write) -> None:
    path = write("ok.yaml", HEAD)
    result = _run("validate", str(path), "--set", "calibration.method=entrpy")
    assert result.exit_code == 1
    assert "--set calibration.method:1:1: calibration.method" in result.output


def test_tensorrt_source_must_name_an_earlier_qdq_export(write) -> None:
    path = write("trt.yaml", HEAD + "export:\n  - {format: tensorrt, source: head.onnx, path: head.engine}\n"
                 "  - {format: onnx-qdq, path: head.onnx}\n")
    result = _run("validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:4:24: export[0].source: source 'head.onnx' is not the path of an earlier onnx-qdq export" \
        in result.output
