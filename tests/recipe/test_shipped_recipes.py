"""The shipped recipes (``recipes/``, with ``base/int8_tensorrt.yaml`` that every ``recipe init`` draft
extends) reach a non-editable install: the wheel carries them as data files and the catalogue finds
them under ``<prefix>/share/recipe-engine/recipes`` as well as in a source checkout."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recipe_engine.recipe.loader import SHARE_SUBDIR, shipped_recipe_dirs

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*.yaml"))


def _fake_install(prefix: Path, site: Path) -> Path:
    package = site / "recipe_engine"
    (package / "recipe").mkdir(parents=True)
    (prefix / SHARE_SUBDIR / "base").mkdir(parents=True)
    (prefix / SHARE_SUBDIR / "base" / "int8_tensorrt.yaml").write_text("quantizers: {}\n")
    return package


def test_source_checkout_uses_the_top_level_recipes_folder() -> None:
    assert shipped_recipe_dirs() == [REPO / "recipes"]
    assert "base/int8_tensorrt.yaml" in SHIPPED


def test_installed_layouts_find_the_share_folder(tmp_path) -> None:
    venv = tmp_path / "venv"
    package = _fake_install(venv, venv / "lib" / "python3.11" / "site-packages")
    assert shipped_recipe_dirs(package) == [venv / SHARE_SUBDIR]
    target = tmp_path / "target"  # pip install --target: <target>/recipe_engine and <target>/share
    package = _fake_install(target, target)
    assert shipped_recipe_dirs(package) == [target / SHARE_SUBDIR]


def _run(command: list[str], **options) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **options)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_wheel_ships_the_recipes_and_an_installed_copy_resolves_extends(tmp_path) -> None:
    pytest.importorskip("setuptools", minversion="68")  # pyproject's build requirement, used without isolation
    if importlib.util.find_spec("wheel") is None:
        pytest.importorskip("setuptools", minversion="70.1")  # bdist_wheel without the wheel package
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "recipe_engine", src / "recipe_engine", ignore=ignore)
    shutil.copytree(REPO / "recipes", src / "recipes", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl")], cwd=src)
    (wheel,) = (tmp_path / "whl").glob("*.whl")
    data = "recipe_engine-0.1.0.data/data/share/recipe-engine/recipes/"
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.removeprefix(data) for n in names if n.startswith(data)) == SHIPPED

    target = tmp_path / "target"
    _run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)])
    user = tmp_path / "elsewhere"
    user.mkdir()
    (user / "mine.yaml").write_text("recipe: mine\nversion: 0.1.0\nextends: base/int8_tensorrt.yaml\n"
                                    "model: {factory: torch.nn:Identity}\n")
    probe = ("import recipe_engine; from recipe_engine.recipe import load_recipe; r = load_recipe('mine.yaml');"
             "print(recipe_engine.__file__); print(r.files[0]); print(r.spec.quantizers['act'].calibrator)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("RECIPE_PATH", None)
    out = _run([sys.executable, "-c", probe], cwd=user, env=env).stdout.splitlines()
    assert out == [str(target / "recipe_engine" / "__init__.py"),
                   str(target / SHARE_SUBDIR / "base" / "int8_tensorrt.yaml"), "histogram"]
    # `recipe schema` of an installed copy prints the schema (there is no checkout to write into: before, it
    # wrote <target>/schemas/recipe.schema.json beside site-packages); --check without a file is a clear error
    schema = ("import sys; from recipe_engine.cli import main; main(sys.argv[1:], prog_name='recipe')")
    printed = _run([sys.executable, "-c", schema, "schema"], cwd=user, env=env).stdout
    assert json.loads(printed)["$id"].endswith("recipe.schema.json")
    assert not (target / "schemas").exists()
    check = subprocess.run([sys.executable, "-c", schema, "schema", "--check"], cwd=user, env=env,
                           capture_output=True, text=True)
    assert check.returncode != 0 and "not a project checkout" in check.stderr and "Traceback" not in check.stderr
