"""Extends merging, --set overrides, lock hashing, catalogue, schema and CLI basics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipe_engine.cli import main
from recipe_engine.recipe import RecipeError, load_recipe, lock_text
from recipe_engine.recipe.schema_file import default_schema_path, schema_text

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_validates(path: Path) -> None:
    loaded = load_recipe(path)
    assert loaded.spec.version.count(".") == 2


def test_schema_file_is_current() -> None:
    assert default_schema_path().read_text() == schema_text(), "run `recipe schema` and commit the result"


def test_schema_has_help_on_every_field() -> None:
    schema = json.loads(schema_text())
    missing = []
    for name, definition in schema["$defs"].items():
        for field, info in definition.get("properties", {}).items():
            if "title" not in info and "description" not in info:
                missing.append(f"{name}.{field}")
    assert not missing, missing


def test_extends_merges_maps_replaces_lists_and_appends_with_plus(write) -> None:
    write("base.yaml", """
        recipe: base
        version: 1.0.0
        quantizers:
          act: {calibrator: histogram}
          w: {per_channel: true}
        rules:
          - {select: a, quantize: {input: act}}
        disable: [x, y]
        calibration: {method: mse, batches: 4}
        """)
    child = write("child.yaml", """
        recipe: child
        version: 2.0.0
        extends: base.yaml
        quantizers:
          act: {num_bits: 6}
        rules+:
          - {select: b, quantize: {weight: w}}
        disable: [z]
        calibration: {batches: null}
        """)
    spec = load_recipe(child).spec
    assert spec.recipe == "child" and spec.version == "2.0.0"
    assert spec.quantizers["act"].num_bits == 6 and spec.quantizers["act"].calibrator == "histogram"
    assert [r.select for r in spec.rules] == ["a", "b"]
    assert spec.disable == ["z"]
    assert spec.calibration.method == "mse" and spec.calibration.batches is None


def test_error_in_appended_rule_points_at_child_file(write) -> None:
    write("base.yaml", "recipe: base\nversion: 1.0.0\nrules:\n  - {select: a, quantize: {input: {num_bits: 8}}}\n")
    child = write("child.yaml", "recipe: c\nversion: 1.0.0\nextends: base.yaml\nrules+:\n"
                  "  - {select: b, quantize: {input: {num_bitz: 8}}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(child)
    assert f"{child}:5:" in str(info.value) and "rules[1].quantize.input.num_bitz" in str(info.value)


def test_set_overrides_parse_yaml_values(write) -> None:
    path = write("r.yaml", "recipe: r\nversion: 1.0.0\nrules:\n  - {select: a, quantize: {input: {num_bits: 8}}}\n")
    loaded = load_recipe(path, ["calibration.batches=8", "disable=[a, b.c]", "rules.0.select=conv*",
                                "quantizers.act={calibrator: histogram}"])
    spec = loaded.spec
    assert spec.calibration.batches == 8
    assert spec.disable == ["a", "b.c"]
    assert spec.rules[0].select == "conv*"
    assert spec.quantizers["act"].calibrator == "histogram"


@pytest.mark.parametrize("bad", ["calibration.batches", "=3", "rules.5.select=x", "a..b=1"])
def test_bad_set_overrides_are_recipe_errors(write, bad: str) -> None:
    path = write("r.yaml", "recipe: r\nversion: 1.0.0\n")
    with pytest.raises(RecipeError):
        load_recipe(path, [bad])


def test_lock_hash_is_stable_across_key_order_whitespace_and_defaults(write) -> None:
    a = write("a.yaml", "recipe: r\nversion: 1.0.0\ncalibration: {method: mse, batches: 4}\nquantizers:\n"
              "  act: {calibrator: histogram}\n")
    b = write("b.yaml", "quantizers:\n    act:\n        calibrator: histogram\n        num_bits: 8\n"
              "calibration:\n    batches: 4\n    method: mse\n\n\nversion: 1.0.0\nrecipe: r\n")
    c = write("c.yaml", "recipe: r\nversion: 1.0.0\ncalibration: {method: mse, batches: 5}\nquantizers:\n"
              "  act: {calibrator: histogram}\n")
    assert load_recipe(a).sha256 == load_recipe(b).sha256
    assert load_recipe(a).sha256 != load_recipe(c).sha256
    assert lock_text(load_recipe(a).spec) == lock_text(load_recipe(b).spec)


def test_lock_file_is_itself_a_recipe_with_the_same_hash(write) -> None:
    loaded = load_recipe(ROOT / "recipes" / "centerpoint_int8.yaml")
    lock = write("recipe.lock.yaml", lock_text(loaded.spec))
    again = load_recipe(lock)
    assert again.sha256 == loaded.sha256
    assert f"# sha256: {loaded.sha256}" in lock.read_text()


def test_catalogue_names_resolve_in_extends(write) -> None:
    child = write("elsewhere/child.yaml", "recipe: c\nversion: 1.0.0\nextends: base/int8_tensorrt\n")
    spec = load_recipe(child).spec
    assert spec.quantizers["w_channel"].per_channel


def test_list_and_diff_commands(write) -> None:
    runner = CliRunner()
    listing = runner.invoke(main, ["list", "--json", str(ROOT / "recipes")])
    assert listing.exit_code == 0, listing.output
    names = {e["name"] for e in json.loads(listing.output)}
    assert {"base/int8_tensorrt", "centerpoint-int8"} <= names
    a = write("a.yaml", "recipe: r\nversion: 1.0.0\ncalibration: {method: mse}\n")
    b = write("b.yaml", "recipe: r\nversion: 1.1.0\ncalibration: {method: entropy}\ndisable: [x]\n")
    diff = runner.invoke(main, ["diff", str(a), str(b), "--exit-code"])
    assert diff.exit_code == 1
    assert '~ calibration.method: "mse" -> "entropy"' in diff.output
    assert '+ disable[0]: "x"' in diff.output
    assert '~ version: "1.0.0" -> "1.1.0"' in diff.output
    same = runner.invoke(main, ["diff", str(a), str(a)])
    assert same.exit_code == 0 and "identical" in same.output


def test_schema_check_detects_a_stale_file(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "schema.json"
    assert runner.invoke(main, ["schema", "--check", "-o", str(target)]).exit_code == 1
    assert runner.invoke(main, ["schema", "-o", str(target)]).exit_code == 0
    assert runner.invoke(main, ["schema", "--check", "-o", str(target)]).exit_code == 0


def test_validate_and_help_do_not_import_torch() -> None:
    code = ("import sys; from recipe_engine.cli import main\n"
            "try:\n    main(['validate', '-q', sys.argv[1]])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    recipe = str(ROOT / "recipes" / "centerpoint_int8.yaml")
    subprocess.run([sys.executable, "-c", code, recipe], check=True)
    code_help = code.replace("['validate', '-q', sys.argv[1]]", "['--help']")
    subprocess.run([sys.executable, "-c", code_help, recipe], check=True, capture_output=True)


def test_set_plus_appends_to_lists(write) -> None:
    path = write("r.yaml", "recipe: r\nversion: 1.0.0\ndisable: [a]\n")
    assert load_recipe(path, ["disable+=[b, c]"]).spec.disable == ["a", "b", "c"]
    assert load_recipe(path, ["rules+=[{select: x, quantize: {input: {num_bits: 8}}}]"]).spec.rules[0].select == "x"
