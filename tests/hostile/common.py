"""What every hostile test checks: exit 1, no traceback, a located message, one coherent run on disk."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

RECIPE = {
    "recipe": "hostile-int8", "version": "1.0.0",
    "model": {"factory": "tests.helpers:build_dense"},
    "data": {"calibration": {"factory": "tests.helpers:dense_batches", "kwargs": {"count": 3}},
             "validation": {"factory": "tests.helpers:dense_batches", "kwargs": {"count": 2, "seed": 9}},
             "evaluate": "tests.helpers:output_energy"},
    "quantizers": {"act": {"calibrator": "max"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d|ConvTranspose2d", "BatchNorm2d", "ReLU"]}],
    "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}}],
    "calibration": {"method": "max", "batches": 3},
    "export": [{"format": "onnx-qdq", "path": "model.onnx"}, {"format": "onnx-qdq", "path": "again.onnx"}],
}


def write_recipe(folder: Path, data: dict | None = None, name: str = "hostile.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data or RECIPE, sort_keys=False), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RECIPE_NO_PROGRESS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def recipe_command(*args: str, hook: str = "plain") -> list[str]:
    return [sys.executable, "-m", "tests.hostile.killable", hook, *args]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, hook: str = "plain",
            **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(recipe_command(*args, hook=hook), env={**env(), **extra}, cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_coherent(out: Path) -> dict:
    """``out`` holds one complete run: every file's recipe is the one of metrics.json, no temp files."""
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics.get("status") == "ok", metrics.get("status")
    lock = (out / "recipe.lock.yaml").read_text()
    assert f"# sha256: {metrics['sha256']}" in lock
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    expected = {e["path"] for e in metrics["exports"]}
    onnx_files = {p.name for p in out.glob("*.onnx")}
    assert onnx_files == expected, (onnx_files, expected)  # no artifact of another run
    return metrics


def assert_failed_record(record: Path, status: str = "failed") -> dict:
    metrics = json.loads((record / "metrics.json").read_text())
    assert metrics["status"] == status and metrics["failure"]["error"]
    assert (record / "report.md").read_text().startswith("# FAILED") or status == "killed"
    assert not [p for p in record.rglob("*") if p.name.endswith(".tmp")]
    return metrics


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
