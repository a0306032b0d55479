"""User-fixable errors become one located message (exit 1, no traceback), and the run directory
keeps the previous complete run next to one coherent failed-run record. Also: load_quantized never
runs what a file names; ``--nproc`` failures are one line per rank; the Python API follows the
recipe's ``data.forward``."""

from __future__ import annotations

import copy
import errno
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from recipe_engine.cli import main
from recipe_engine.recipe.errors import RecipeError
from tests.helpers import build_dense
from tests.hostile.common import (
    RECIPE,
    assert_coherent,
    assert_failed_record,
    no_traceback,
    run_cli,
    snapshot,
    write_recipe,
)

U = "tests.hostile.usercode"
USER_FILE = "tests/hostile/usercode.py:"


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("previous")
    out = folder / "out"
    done = CliRunner().invoke(main, ["run", str(write_recipe(folder)), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert_coherent(out)
    return out


def _checkpoint(tmp_path: Path, kind: str) -> str:
    state = build_dense(seed=3).state_dict()
    if kind == "shape":
        state["stem.0.weight"] = torch.randn(4, 3, 3, 3)
    elif kind == "missing":
        state.pop("head.weight")
    path = tmp_path / f"{kind}.pt"
    torch.save([state["head.weight"]] if kind == "list" else {"model": state} if kind == "key" else state, path)
    return str(path)


def _case(tmp_path: Path, name: str) -> tuple[dict, str, list[str]]:
    """(recipe, located key, other fragments the message must hold) of each user error."""
    data = copy.deepcopy(RECIPE)
    d, m = data["data"], data["model"]
    if name == "factory raises":
        m["factory"] = f"{U}:broken_factory"
        return data, "model.factory", ["ValueError: the weights server is down", USER_FILE]
    if name == "factory has a SyntaxError":
        (tmp_path / "user_syntax.py").write_text("def build(:\n    pass\n")
        m["factory"] = "user_syntax:build"
        return data, "model.factory", ["SyntaxError", "user_syntax.py:1"]
    if name == "data factory raises":
        d["calibration"] = {"factory": f"{U}:broken_data"}
        return data, "data.calibration.factory", ["KeyError", USER_FILE]
    if name == "forward raises":
        d["forward"] = f"{U}:broken_forward"
        return data, "data.forward", ["RuntimeError: forward of the user failed", USER_FILE]
    if name == "evaluate raises":
        d["evaluate"] = f"{U}:broken_evaluate"
        return data, "data.evaluate", ["ZeroDivisionError: no validation samples", USER_FILE]
    if name == "evaluate returns a list":
        d["evaluate"] = f"{U}:list_evaluate"
        return data, "data.evaluate", ["returned list", "dict of numbers"]
    if name == "data of wrong shapes":
        d["calibration"] = {"factory": f"{U}:wrong_shape_data"}
        return data, "data.calibration", ["RuntimeError", "tests/helpers.py:"]
    if name.startswith("checkpoint"):
        kind = name.split()[-1]
        m["checkpoint"] = _checkpoint(tmp_path, kind)
        if kind == "key":
            m["checkpoint_key"] = "state_dict"
            return data, "model.checkpoint_key", ["has no key 'state_dict'", "model"]
        expected = {"shape": "stem.0.weight (4, 3, 3, 3) (model (8, 3, 3, 3))", "missing": "missing key(s): head.weight",
                    "list": "holds a list, not a state dict"}[kind]
        return data, "model.checkpoint", [expected]
    raise AssertionError(name)


CASES = ["factory raises", "factory has a SyntaxError", "data factory raises", "forward raises", "evaluate raises",
         "evaluate returns a list", "data of wrong shapes", "checkpoint shape", "checkpoint missing",
         "checkpoint list", "checkpoint key"]


def _run_over_previous(tmp_path: Path, previous_run: Path, recipe: dict) -> tuple[object, Path]:
    out = tmp_path / "runs" / "out"
    shutil.copytree(previous_run, out)
    result = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path, recipe)), "--out", str(out)])
    return result, out


@pytest.mark.parametrize("name", CASES)
def test_user_error_is_located_without_traceback_and_keeps_the_previous_run(tmp_path, previous_run, monkeypatch,
                                                                              name) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe, key, fragments = _case(tmp_path, name)
    before = snapshot(previous_run)
    result, out = _run_over_previous(tmp_path, previous_run, recipe)
    assert result.exit_code == 1, result.output
    no_traceback(result.output)
    assert isinstance(result.exception, SystemExit)
    assert re.search(rf"hostile\.yaml:\d+:\d+: {re.escape(key)}: ", result.output), result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    assert "recipe_engine/" not in result.output.replace("recipe_engine/zoo", "")  # engine frames hidden
    assert snapshot(out) == before  # the previous complete run is untouched
    record = assert_failed_record(out.parent / "out.failed")
    assert key.split(".")[0] in record["failure"]["error"]


@pytest.mark.parametrize("file", ["recipe.lock.yaml", "model.pt", "model.onnx", "metrics.json"])
def test_disk_full_at_any_stage_is_one_message(tmp_path, previous_run, monkeypatch, file) -> None:
    """ENOSPC simulated once for one file's write (a tmpfs test is in test_run_directory.py)."""
    failed = []

    def full(path, *args, **kwargs):
        if f".{file}." in Path(path).name and not failed:
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original[type(args[0]) if args else None](path, *args, **kwargs)

    original = {str: Path.write_text, bytes: Path.write_bytes}
    monkeypatch.setattr(Path, "write_text", lambda self, data, *a, **k: full(self, data, *a, **k))
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: full(self, data))
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, path, *a, **k: full(path, b"") if f".{file}." in Path(
        str(path)).name and not failed else real_save(obj, path, *a, **k))
    before = snapshot(previous_run)
    result, out = _run_over_previous(tmp_path, previous_run, RECIPE)
    assert failed, "the simulated disk never filled"
    assert result.exit_code == 1, result.output
    no_traceback(result.output)
    assert f"cannot write {failed[0].parent}/{file}: the disk is full" in result.output.replace("\n", " ")
    assert snapshot(out) == before
    assert_failed_record(out.parent / "out.failed")


# ----------------------------------------------------------------------------- load_quantized
def _evil_model_file(tmp_path: Path, marker: Path, **lock_extra) -> Path:
    from recipe_engine.pipeline import MODEL_FILE_FORMAT
    from recipe_engine.recipe.loader import load_recipe_data
    from recipe_engine.recipe.lock import lock_text

    data = {"recipe": "evil", "version": "1.0.0",
            "model": {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}}, **lock_extra}
    loaded = load_recipe_data(data)
    payload = {"format": MODEL_FILE_FORMAT, "lock": lock_text(loaded.spec), "sha256": loaded.sha256,
               "state_dict": build_dense().state_dict(), "op_sites": {}, "disabled": []}
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    torch.load(path, weights_only=True)  # only tensors and strings
    return path


def test_load_quantized_never_calls_the_factory_a_file_names(tmp_path) -> None:
    from recipe_engine.pipeline import load_quantized

    marker = tmp_path / "MARKER"
    path = _evil_model_file(tmp_path, marker)
    with pytest.raises(RecipeError, match="pass the model to rebuild .*os:system") as info:
        load_quantized(path)
    assert "trust_recipe=True" in info.value.format()
    assert not marker.exists()
    restored = load_quantized(path, model=build_dense())  # the caller's model: fine
    assert not marker.exists() and restored.recipe_state is not None
    assert load_quantized(path, factory=build_dense) is not None and not marker.exists()


def test_load_quantized_refuses_lock_types_that_would_import_new_modules(tmp_path, monkeypatch) -> None:
    from recipe_engine.pipeline import load_quantized

    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_types.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Block: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _evil_model_file(tmp_path, tmp_path / "MARKER",
                            rules=[{"select": {"type": "evil_types:Block"}, "quantize": {"input": {}}}],
                            quantizers={})
    with pytest.raises(RecipeError, match="evil_types.*not imported"):
        load_quantized(path, model=build_dense())
    assert not marker.exists()


def test_trust_recipe_lists_what_it_runs_first(tmp_path, caplog) -> None:
    from recipe_engine.pipeline import load_quantized

    path = _evil_model_file(tmp_path, tmp_path / "MARKER")
    path_lock = torch.load(path, weights_only=True)
    path_lock["lock"] = path_lock["lock"].replace("factory: os:system", "factory: tests.helpers:build_dense")
    path_lock["lock"] = path_lock["lock"].replace(f"command: touch {tmp_path / 'MARKER'}", "seed: 0")
    torch.save(path_lock, path)
    with caplog.at_level(logging.WARNING, logger="recipe_engine"):
        model = load_quantized(path, trust_recipe=True)
    assert "may import and run: tests.helpers:build_dense" in caplog.text
    assert model.recipe_state is not None


# ----------------------------------------------------------------------------- --nproc
def test_nproc_reports_one_line_per_failed_rank(tmp_path) -> None:
    data = copy.deepcopy(RECIPE)
    data.pop("export")
    data["data"]["calibration"] = {"factory": f"{U}:rank1_fails"}
    data["calibration"]["batches"] = 4
    done = run_cli("run", str(write_recipe(tmp_path, data)), "--out", str(tmp_path / "out"), "--nproc", "2",
                   timeout=400)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    no_traceback(done.stdout + done.stderr)
    lines = [line for line in done.stderr.splitlines() if re.match(r"rank \d: ", line)]
    assert len(lines) == 2, done.stderr
    assert re.search(r"rank 1: \S*hostile\.yaml:\d+:\d+: data\.calibration\.factory: .*rank 1 cannot read its shard",
                     done.stderr), done.stderr
    assert re.search(r"rank 0: stopped", done.stderr), done.stderr
    assert "ChildFailedError" not in done.stderr
    assert not (tmp_path / "out").exists()  # no complete run is claimed; rank 0 kept the failed record
    assert_failed_record(tmp_path / "out.failed")


def test_nproc_children_do_not_import_from_the_working_directory(tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "STRAY"
    (work / "onnx.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('stray onnx')\n")
    data = copy.deepcopy(RECIPE)
    data["calibration"]["batches"] = 2
    data["export"] = data["export"][:1]
    done = run_cli("run", str(write_recipe(tmp_path, data)), "--out", str(tmp_path / "out"), "--nproc", "2",
                   cwd=work, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert not marker.exists()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["exports"][0]["status"] == "ok"


# ----------------------------------------------------------------------------- Python API
def test_prepare_follows_the_recipes_forward_and_data_on_zoo_centerpoint() -> None:
    import recipe_engine as re8
    from recipe_engine.quant import backend
    from recipe_engine.zoo import centerpoint
    from tests.conftest import RECIPES

    recipe = re8.load_recipe(RECIPES / "centerpoint_int8.yaml", overrides=["calibration.batches=2",
                                                                         "data.calibration.kwargs.count=2"])
    model = re8.prepare(centerpoint.build(pretrained=True), recipe)  # no batches, no forward
    state = model.recipe_state
    amax = [backend.get_amax(q) for _, q in state.unique()]
    assert len(amax) > 10 and all(a is not None and float(a.max()) > 0 for a in amax)


def test_zoo_checkpoint_errors_are_recipe_errors(tmp_path) -> None:
    from torch import nn

    from recipe_engine.zoo.checkpoint import load_into

    with pytest.raises(RecipeError, match="does not fit Linear: missing weight"):
        load_into(nn.Linear(2, 2), "digits")
    with pytest.raises(RecipeError, match="not found"):
        load_into(nn.Linear(2, 2), tmp_path / "nothing.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(RecipeError, match="is not a zoo checkpoint"):
        load_into(nn.Linear(2, 2), tmp_path / "list.pt")
