"""``benchmarks/accuracy.py --quick --models digits --seeds 0``: every row is measured, FP32 is the zoo's figure.

About 30 s (a subprocess: the driver sets torch's thread count).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from recipe_engine.zoo.checkpoint import load_checkpoint
from tests.conftest import ROOT

ROWS = ["FP32", "INT8 PTQ, calibration max", "INT8 PTQ, calibration entropy (the recipe's own)",
        "INT8 PTQ, calibration mse", "INT8 PTQ, calibration percentile", "INT8 + PTQ bias_correction",
        "INT8 + PTQ cle", "INT8 + PTQ range_search", "INT8 + PTQ adaround", "INT8 + PTQ brecq",
        "INT8 + PTQ range_search + adaround", "INT8 + `tune:`", "INT8 QAT", "onnxruntime FP32",
        "onnxruntime quantize_static MinMax", "onnxruntime quantize_static Entropy",
        "onnxruntime quantize_static Percentile", "Model-Optimizer"]


def test_quick_digits_run_has_every_row_and_the_zoo_fp32(tmp_path) -> None:
    out = tmp_path / "tables.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--quick", "--models", "digits",
                           "--seeds", "0", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_text() == done.stdout  # --out holds the same tables as stdout
    lines = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 3:
            lines[cells[0]] = cells
    figures = {}
    for row in ROWS:
        found = [cells for label, cells in lines.items() if label.startswith(row)]
        assert found, f"row {row!r} missing from:\n{done.stdout}"
        assert re.fullmatch(r"\d+\.\d\d", found[0][1]), f"{row}: no figure measured: {found[0]}"
        figures[row] = float(found[0][1])
    zoo_fp32 = load_checkpoint("digits")[1]["metric"]  # what the zoo recorded when it trained the model
    assert figures["FP32"] == round(zoo_fp32, 2)
    assert figures["onnxruntime FP32"] == figures["FP32"]
    # the shipped recipe keeps digits' top-1 within a point of FP32; a broken row would not
    assert figures["INT8 PTQ, calibration entropy (the recipe's own)"] >= figures["FP32"] - 1.0
    assert "Run complete" in done.stdout
