"""The run directory under faults: kill -9 during calibration and export, concurrent runs, failed
runs, a full and a read-only file system, paths outside the run directory, umask, QAT checkpoints.

Every case asserts the run directory holds one coherent run (the previous complete one, or the new
one) and that nothing is written outside it."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipe_engine.cli import main
from tests.hostile.common import (
    RECIPE,
    ROOT,
    assert_coherent,
    assert_failed_record,
    env,
    no_traceback,
    recipe_command,
    run_cli,
    snapshot,
    write_recipe,
)


def _other_recipe(**data_changes) -> dict:
    other = copy.deepcopy(RECIPE)
    other["version"] = "2.0.0"
    other["export"] = [{"format": "onnx-qdq", "path": "b_only.onnx"}, {"format": "onnx-qdq", "path": "b_too.onnx"}]
    other["data"].update(data_changes)
    return other


def _start_blocked(tmp_path: Path, recipe: Path, out: Path, hook: str = "plain") -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    process = subprocess.Popen(recipe_command("run", str(recipe), "--out", str(out), hook=hook), cwd=ROOT,
                               env={**env(), "READY_FILE": str(ready)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ready.exists():
        if process.poll() is not None:
            raise AssertionError(process.communicate())
        assert time.monotonic() < deadline, "the run never got ready"
        time.sleep(0.1)
    return process, ready


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()


@pytest.fixture
def complete_run(tmp_path) -> Path:
    out = tmp_path / "runs" / "x"
    done = run_cli("run", str(write_recipe(tmp_path)), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_coherent(out)
    return out


@pytest.mark.parametrize("stage", ["calibration", "export"])
def test_kill_9_leaves_the_previous_run_and_the_next_run_records_and_cleans(tmp_path, complete_run, stage) -> None:
    out = complete_run
    before = snapshot(out)
    data = {"calibration": {"factory": "tests.hostile.usercode:blocking_data", "kwargs": {"count": 3}}} \
        if stage == "calibration" else {}
    recipe = write_recipe(tmp_path, _other_recipe(**data), "other.yaml")
    process, _ = _start_blocked(tmp_path, recipe, out, hook="export" if stage == "export" else "plain")
    staging = out.parent / ".x.staging"
    if stage == "export":
        assert (staging / "b_only.onnx").is_file()  # killed after its first artifact
    _kill(process)
    assert snapshot(out) == before  # the previous complete run, untouched
    assert staging.is_dir() and (out.parent / ".x.lock").is_file()

    from recipe_engine.util.rundir import RunDirectory

    run_dir = RunDirectory(out)  # the next run: takes the stale lock over and records the killed run
    run_dir.open("probe")
    record = assert_failed_record(out.parent / "x.failed", status="killed")
    assert record["recipe"] if stage == "export" else True
    assert not list((out.parent / "x.failed").glob(".*.tmp"))
    run_dir.staging.rmdir()
    run_dir.close()

    done = run_cli("run", str(recipe.with_name("hostile.yaml")), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_coherent(out)
    leftovers = sorted(p.name for p in out.parent.iterdir())
    assert leftovers == ["x"], leftovers  # no staging, lock, trash or stale failed record


def test_a_second_run_into_an_active_directory_is_refused(tmp_path, complete_run) -> None:
    out = complete_run
    before = snapshot(out)
    recipe = write_recipe(tmp_path, _other_recipe(
        calibration={"factory": "tests.hostile.usercode:blocking_data", "kwargs": {"count": 3}}), "other.yaml")
    first, _ = _start_blocked(tmp_path, recipe, out)
    try:
        second = run_cli("run", str(tmp_path / "hostile.yaml"), "--out", str(out))
    finally:
        _kill(first)
    assert second.returncode == 1
    no_traceback(second.stderr)
    assert f"is in use by another run (pid {first.pid}" in second.stderr
    assert snapshot(out) == before
    third = run_cli("run", str(tmp_path / "hostile.yaml"), "--out", str(out))
    assert third.returncode == 0, third.stderr[-2000:]
    assert "took over the stale lock" in third.stderr and f"pid {first.pid}" in third.stderr
    assert_coherent(out)


def test_export_path_outside_the_run_directory_is_refused_before_any_work(tmp_path, complete_run) -> None:
    out = complete_run
    before, around = snapshot(out), snapshot(tmp_path)
    bad = copy.deepcopy(RECIPE)
    bad["export"] = [{"format": "onnx-qdq", "path": "../../outside.onnx"}]
    done = run_cli("run", str(write_recipe(tmp_path, bad, "bad.yaml")), "--out", str(out))
    assert done.returncode == 1
    no_traceback(done.stderr)
    assert "bad.yaml:" in done.stderr and "export" in done.stderr
    assert snapshot(out) == before
    assert not (out.parent / "x.failed").exists()  # refused at validation: nothing ran
    outside = {k for k in snapshot(tmp_path) if k not in around}
    assert outside == {"bad.yaml"}, outside  # nothing written outside the run directory


def test_failed_export_keeps_previous_run_and_records_figures(tmp_path, complete_run) -> None:
    out = complete_run
    before, around = snapshot(out), snapshot(tmp_path)
    done = run_cli("run", str(write_recipe(tmp_path, RECIPE, "late.yaml")), "--out", str(out),
                   hook="failexport")
    assert done.returncode == 1
    no_traceback(done.stderr)
    assert "late.yaml:" in done.stderr and "simulated export failure" in done.stderr
    assert snapshot(out) == before
    record = assert_failed_record(out.parent / "x.failed")
    assert record["failure"]["stage"] == "export" and "fp32" in record and "int8" in record
    assert (out.parent / "x.failed" / "model.pt").is_file()
    outside = {k for k in snapshot(tmp_path) if k not in around and not k.startswith("runs/x.failed/")}
    assert outside == {"late.yaml"}, outside


def test_a_later_complete_run_replaces_the_failed_record_and_drops_artifacts_of_the_previous_run(tmp_path) -> None:
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path)), "--out", str(out)])
    assert first.exit_code == 0, first.output
    smaller = copy.deepcopy(RECIPE)
    smaller["export"] = smaller["export"][:1]
    second = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path, smaller, "small.yaml")), "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert_coherent(out)
    assert not (out / "again.onnx").exists()


def test_default_run_directory_name_is_sanitised(tmp_path) -> None:
    evil = copy.deepcopy(RECIPE)
    evil["recipe"] = ".."
    evil.pop("export")
    recipe = write_recipe(tmp_path, evil)
    (tmp_path / "work").mkdir()
    done = run_cli("run", str(recipe), cwd=tmp_path / "work")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "work" / "report.md").exists() and not (tmp_path / "report.md").exists()
    assert [p.name for p in (tmp_path / "work" / "runs").iterdir()] == ["run"]


def test_files_follow_the_umask(tmp_path) -> None:
    previous = os.umask(0o022)
    try:
        done = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path)), "--out", str(tmp_path / "out")])
    finally:
        os.umask(previous)
    assert done.exit_code == 0, done.output
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert set(modes.values()) == {0o644}, modes


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); ENOSPC is simulated in test_user_errors.py")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_is_one_message_and_leaves_no_temp_files(tmp_path, small_tmpfs) -> None:
    done = run_cli("run", str(write_recipe(tmp_path)), "--out", str(small_tmpfs / "run"))
    assert done.returncode == 1
    no_traceback(done.stderr)
    assert "the disk is full" in done.stderr
    assert not (small_tmpfs / "run").exists()  # no complete run was claimed
    assert not [p for p in small_tmpfs.rglob("*") if p.name.endswith(".tmp")]


def test_read_only_file_system_is_refused_before_any_work(tmp_path, small_tmpfs) -> None:
    (small_tmpfs / "run").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    done = run_cli("run", str(write_recipe(tmp_path)), "--out", str(small_tmpfs / "run"))
    assert done.returncode == 1
    no_traceback(done.stderr)
    assert "is not writable" in done.stderr or "read-only" in done.stderr


# ----------------------------------------------------------------------------- QAT checkpoints
def _qat_recipe(tmp_path: Path, steps: int, name: str) -> Path:
    from tests.train.common import recipe

    data = recipe(steps=steps, checkpoint_every=2, log_every=1)
    data.pop("export", None)
    return write_recipe(tmp_path, data, name)


def test_qat_checkpoint_of_another_recipe_is_kept_unless_overwrite(tmp_path) -> None:
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["run", str(_qat_recipe(tmp_path, 3, "a.yaml")), "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = snapshot(out)
    again = CliRunner().invoke(main, ["run", str(tmp_path / "a.yaml"), "--out", str(out)])
    assert again.exit_code == 0, again.output  # same recipe: resumes from the previous run's checkpoint
    assert json.loads((out / "metrics.json").read_text())["qat_resumed_from_step"] == 3
    before = snapshot(out)
    other = _qat_recipe(tmp_path, 4, "b.yaml")
    refused = CliRunner().invoke(main, ["run", str(other), "--out", str(out)])
    assert refused.exit_code == 1 and "holds a QAT checkpoint of another recipe" in refused.output
    assert "--overwrite" in refused.output
    assert snapshot(out) == before
    forced = CliRunner().invoke(main, ["run", str(other), "--out", str(out), "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "metrics.json").read_text())["qat_steps"] == 4


def test_qat_killed_mid_training_resumes_from_its_failed_record(tmp_path) -> None:
    from tests.train.common import recipe

    data = recipe(steps=6, checkpoint_every=2, log_every=1)
    data["data"]["train"] = {"factory": "tests.hostile.usercode:blocking_train", "kwargs": {"count": 8, "at": 3}}
    path = write_recipe(tmp_path, data, "qat.yaml")
    out = tmp_path / "runs" / "q"
    process, _ = _start_blocked(tmp_path, path, out)
    _kill(process)  # killed at step 3, after the checkpoint of step 2
    assert not out.exists() and (out.parent / ".q.staging" / "qat_checkpoint.pt").is_file()
    done = run_cli("run", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "was killed before it finished" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["qat_resumed_from_step"] == 2 and metrics["qat_steps"] == 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["q"]


def test_a_directory_that_is_not_a_run_directory_is_never_replaced(tmp_path) -> None:
    precious = tmp_path / "project"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    done = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path)), "--out", str(precious)])
    assert done.exit_code == 1 and "is not a run directory" in done.output
    assert snapshot(precious) == {"notes.txt": snapshot(precious)["notes.txt"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.yaml", "project"]
