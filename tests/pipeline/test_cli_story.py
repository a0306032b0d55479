"""`recipe run` tells its story (stage lines, summary table, --json, --quiet) and `recipe inspect` (issue 14)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from recipe_engine.cli import main
from tests.conftest import ROOT

RECIPE = str(ROOT / "recipes" / "digits_int8.yaml")
STAGES = ["build model", "load data", "export check", "FP32 evaluation", "apply", "calibration", "INT8 evaluation",
          "layer SQNR", "save", "export", "report"]


@pytest.fixture(scope="module")
def story_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("story") / "digits"
    result = CliRunner().invoke(main, ["run", RECIPE, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result, json.loads((out / "metrics.json").read_text())


def test_run_prints_a_line_per_stage_with_its_duration(story_run) -> None:
    out, result, metrics = story_run
    lines = result.stderr.splitlines()
    stages = [line for line in lines if not line.startswith(" ")]
    assert [re.split(r"\s{2,}", s)[0] for s in stages] == STAGES
    assert all(re.search(r"\s\d+\.\d\d s", s) for s in stages)
    found = {re.split(r"\s{2,}", s)[0]: s for s in stages}
    assert f"top1 {metrics['fp32']['top1']:.2f}" in found["FP32 evaluation"]
    assert f"top1 {metrics['int8']['top1']:.2f}" in found["INT8 evaluation"]
    assert f"fusions {metrics['fused']} / quantizers {metrics['quantizers']}" in found["apply"]
    assert f"{metrics['calibration_batches']} batches, entropy" in found["calibration"]
    worst = min((i for i in metrics["layer_sqnr"] if i["output_db"] is not None), key=lambda i: i["output_db"])
    assert f"{len(metrics['layer_sqnr'])} layers/op sites, worst output {worst['name']}" in found["layer SQNR"]
    onnx, engine = metrics["exports"]
    # each export's line comes as the entry finishes, before the export stage's own line
    export_line = lines.index(found["export"])
    assert lines[export_line - 2] == (f"  digits.onnx ok  runtime {onnx['sqnr_runtime_db']:.2f} dB vs PyTorch "
                                      f"{onnx['sqnr_pytorch_db']:.2f} dB  {onnx['seconds']:.2f} s")
    assert lines[export_line - 1].startswith("  digits.engine skipped (the tensorrt Python package is not installed")
    assert lines[export_line - 1].endswith(f"  {engine['seconds']:.2f} s")


def test_run_summary_table_lists_metrics_and_every_export(story_run) -> None:
    out, result, metrics = story_run
    rows = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    fp32, int8 = metrics["fp32"]["top1"], metrics["int8"]["top1"]
    assert ["metric", "FP32", "INT8", "drop"] in rows
    assert ["top1", f"{fp32:.2f}", f"{int8:.2f}", f"{fp32 - int8:+.2f}"] in rows
    onnx = metrics["exports"][0]
    assert ["digits.onnx", "onnx-qdq", "ok",
            f"runtime {onnx['sqnr_runtime_db']:.2f} dB vs PyTorch {onnx['sqnr_pytorch_db']:.2f} dB"] in rows
    engine = next(r for r in rows if r[0] == "digits.engine")
    assert engine[1] == "tensorrt"
    assert engine[2] == ("skipped (the tensorrt Python package is not installed "
                         "(pip install 'recipe-engine[tensorrt]'))")  # rich markup does not eat [tensorrt]
    assert f"run directory: {out}" in result.stdout
    assert f"report: {out / 'report.md'}" in result.stdout and (out / "report.md").is_file()


def test_run_json_prints_only_the_metrics_on_stdout(tmp_path) -> None:
    out = tmp_path / "digits"
    result = CliRunner().invoke(main, ["run", RECIPE, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((out / "metrics.json").read_text())


def test_run_quiet_prints_nothing_on_success(tmp_path) -> None:
    out = tmp_path / "digits"
    result = CliRunner().invoke(main, ["run", RECIPE, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert (out / "metrics.json").is_file()


def test_run_whose_required_export_fails_exits_non_zero(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the required engine would be built")
    out = tmp_path / "digits"
    result = CliRunner().invoke(main, ["run", RECIPE, "--out", str(out), "--set", "export.1.required=true"])
    assert result.exit_code == 1
    assert re.search(r"^export\s+\d+\.\d\d s  FAILED$", result.stderr, re.M)
    assert "export[1]: digits.engine: tensorrt: cannot build the engine" in result.stderr
    assert "Traceback" not in result.output
    record = json.loads((tmp_path / "digits.failed" / "metrics.json").read_text())
    assert record["status"] == "failed" and record["failure"]["stage"] == "export"
    assert re.search(r"^  digits.engine failed \(tensorrt: cannot build the engine.*\)  \d+\.\d\d s$", result.stderr, re.M)
    # the summary of a failed run: what was measured, each export's status, where the record is (stderr)
    rows = [re.split(r"\s{2,}", line.strip()) for line in result.stderr.splitlines()]
    fp32, int8 = record["fp32"]["top1"], record["int8"]["top1"]
    assert ["top1", f"{fp32:.2f}", f"{int8:.2f}", f"{fp32 - int8:+.2f}"] in rows
    assert ["digits.onnx", "onnx-qdq", "ok"] == next(r for r in rows if r[0] == "digits.onnx")[:3]
    assert next(r for r in rows if r[0] == "digits.engine")[2].startswith("failed (tensorrt: cannot build")
    assert "FAILED during export" in result.stderr
    assert f"failed run record: {tmp_path / 'digits.failed'}" in result.stderr
    assert f"report: {tmp_path / 'digits.failed' / 'report.md'} (report.html beside it)" in result.stderr
    assert result.stdout == ""


def test_inspect_lists_quantizers_with_the_runs_amax(story_run) -> None:
    out, _, metrics = story_run
    result = CliRunner().invoke(main, ["inspect", str(out / "model.pt"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["recipe"], info["version"], info["sha256"]) == ("digits-int8", "1.0.0", metrics["sha256"])
    assert set(info["quantizers"]) == set(metrics["amax"])
    for name, q in info["quantizers"].items():
        assert q["amax"] == pytest.approx(metrics["amax"][name]["amax_max"], rel=1e-6), name
        assert q["channels"] == metrics["amax"][name]["channels"] and q["enabled"]
    assert info["disabled"] == []
    assert [(e["path"], e["format"]) for e in info["exports"]] == [("digits.onnx", "onnx-qdq"),
                                                                   ("digits.engine", "tensorrt")]
    probe = ("import sys; from recipe_engine.inspection import inspect_model; inspect_model(sys.argv[1]); "
             "print(sorted(m for m in sys.modules if m.startswith('recipe_engine.zoo')))")
    seen = subprocess.run([sys.executable, "-c", probe, str(out / "model.pt")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert seen.stdout.strip() == "[]"  # the file's model.factory module was never imported
    text = CliRunner().invoke(main, ["inspect", str(out / "model.pt")])
    assert text.exit_code == 0, text.output
    rows = [re.split(r"\s{2,}", line.strip()) for line in text.stdout.splitlines()]
    weight = metrics["amax"]["stem.0.weight"]
    assert ["stem.0.weight", f"{weight['amax_max']:.4g}", str(weight["channels"]), "yes"] in rows
    assert "disabled (0): -" in text.stdout and "path=digits.engine, format=tensorrt" in text.stdout


def test_inspect_a_file_that_is_not_a_model_is_a_clean_error(tmp_path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a torch file")
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 1
    assert "cannot read it with weights_only=True" in result.output and "Traceback" not in result.output


def test_run_with_qat_tells_the_qat_stage_and_adds_qat_columns(tmp_path) -> None:
    out = tmp_path / "digits"
    result = CliRunner().invoke(main, ["run", RECIPE, "--out", str(out), "--set", "qat={steps: 3}",
                                       "--set", "export=[]"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    qat_line = next(line for line in result.stderr.splitlines() if line.startswith("QAT "))
    assert f"{metrics['qat_steps']} steps" in qat_line and f"top1 {metrics['qat']['top1']:.2f}" in qat_line
    rows = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    fp32, qat = metrics["fp32"]["top1"], metrics["qat"]["top1"]
    assert ["metric", "FP32", "INT8", "drop", "QAT", "QAT drop"] in rows
    assert ["top1", f"{fp32:.2f}", f"{metrics['int8']['top1']:.2f}", f"{fp32 - metrics['int8']['top1']:+.2f}",
            f"{qat:.2f}", f"{fp32 - qat:+.2f}"] in rows
    assert not any(line.startswith("export") for line in result.stderr.splitlines())
