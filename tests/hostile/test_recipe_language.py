"""Hostile input to the recipe language (issue 11, items 2, 4-8, recipe side).

Every bad file must give exit code 1, a ``FILE:LINE:COL:`` message naming the key or the
file, and no traceback, from ``recipe validate`` (or ``recipe plan`` where the problem only
shows once the model is built), in under 2 s for the denial-of-service cases. Times are CPU
time of the test process (``time.process_time``): the work done, independent of how many
other jobs share the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipe_engine.cli import main
from recipe_engine.recipe import load_recipe, lock_text
from recipe_engine.recipe.diffing import diff_recipes
from recipe_engine.recipe.paths import RESERVED_NAMES, safe_dir_name, safe_relative_path
from recipe_engine.recipe.schema import Selector

ROOT = Path(__file__).resolve().parents[2]
HEAD = "recipe: hostile\nversion: 1.0.0\n"
MODEL = ("model: {factory: 'tests.export.models:build_dense'}\n"
         "data: {calibration: {factory: 'tests.export.models:dense_batches'}}\n"
         "quantizers: {act: {}, w: {per_channel: true}}\n")


def _cli(*args: str):
    result = CliRunner().invoke(main, list(args))
    # a CliRunner turns an unhandled exception into exit code 1 without printing it: require a clean exit
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    return result


def assert_located(result, path: Path, *needles: str, line: int | None = None) -> None:
    """Exit 1, a FILE:LINE:COL: message (at ``line`` when given) containing ``needles``, no traceback."""
    output = result.output
    assert result.exit_code == 1, output
    assert "Traceback" not in output, output
    where = re.escape(str(path)) + (rf":{line}:\d+: " if line else r":\d+:\d+: ")
    assert re.search(where, output), output
    for needle in needles:
        assert needle in output, output


@pytest.fixture
def write(tmp_path):
    def _write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return _write


def _export(path: str) -> str:
    return HEAD + f"export:\n  - format: onnx-qdq\n    path: {yaml.safe_dump(path).splitlines()[0]}\n"


# ----------------------------------------------------------------------------- item 2: export paths
BAD_EXPORT_PATHS = ["../../x.onnx", "/abs/x.onnx", "../victim.txt", "", ".", "./", "sub/", "a/../../b.onnx",
                    "~/x.onnx", "C:/x.onnx", "a\\b.onnx", ".hidden.onnx", "sub/.git/x.onnx", "x" * 300 + ".onnx",
                    *[n for n in RESERVED_NAMES if "*" not in n], "hist_layer1.png"]


@pytest.mark.parametrize("bad", BAD_EXPORT_PATHS)
def test_export_path_outside_or_reserved_is_located(bad: str, write) -> None:
    path = write("export.yaml", _export(bad))
    assert_located(_cli("validate", str(path)), path, "export[0].path", "hint: ", line=5)


@pytest.mark.parametrize(("first", "second", "needle"), [
    ("a.onnx", "a.onnx", "used twice"),
    ("a.onnx", "./a.onnx", "used twice"),
    ("a.onnx", "a.onnx/b.onnx", "both a file and the directory"),
    ("d/x/y.onnx", "d/x", "both a file and the directory"),
])
def test_export_paths_that_collide_are_located(first: str, second: str, needle: str, write) -> None:
    path = write("dup.yaml", HEAD + f"export:\n  - {{format: onnx-qdq, path: '{first}'}}\n"
                 f"  - {{format: onnx-qdq, path: '{second}'}}\n")
    assert_located(_cli("validate", str(path)), path, "export[1].path", needle, line=5)


def test_tensorrt_source_must_be_inside_too(write) -> None:
    path = write("trt.yaml", HEAD + "export:\n  - {format: tensorrt, path: m.plan, source: ../m.onnx}\n")
    assert_located(_cli("validate", str(path)), path, "export[0].source")


SEGMENTS = st.sampled_from(["..", ".", "", "a", "b.onnx", "~", "/", "model.pt", "report.md", ".x", "x.", "c:"])


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENTS, max_size=5).map("/".join) | st.text(max_size=12))
def test_safe_relative_path_stays_inside(text: str) -> None:
    """Accepted paths, joined to any run directory, stay strictly inside it; refusals are ValueErrors."""
    try:
        relative = safe_relative_path(text)
    except ValueError as exc:
        assert str(exc)
        return
    out = "/srv/runs/demo"
    joined = os.path.normpath(os.path.join(out, str(relative)))
    assert joined.startswith(out + "/") and joined != out
    assert not relative.is_absolute() and ".." not in relative.parts
    assert all(not part.startswith(".") for part in relative.parts)
    assert str(relative) not in RESERVED_NAMES


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20) | st.sampled_from(["..", ".", "a/../b", "/etc", "../../x", "...", "base/int8", "~"]))
def test_safe_dir_name_is_one_plain_component(name: str) -> None:
    result = safe_dir_name(name)
    assert result and "/" not in result and "\\" not in result and "\x00" not in result
    assert not result.startswith(".") and result not in (".", "..")
    assert PurePosixPath("runs", result).parent == PurePosixPath("runs")


def test_safe_dir_name_keeps_ordinary_names() -> None:
    assert safe_dir_name("digits-int8") == "digits-int8"
    assert safe_dir_name("base/int8_tensorrt") == "base_int8_tensorrt"  # as the CLI has always done
    assert safe_dir_name("..") == "run"
    assert safe_dir_name("a/../b") == "a_.._b"


# ----------------------------------------------------------------------------- item 4: tracebacks
def test_non_utf8_recipe_is_located(write) -> None:
    path = write("latin1.yaml", HEAD.encode() + b"description: caf\xe9\n")
    assert_located(_cli("validate", str(path)), path, "not valid UTF-8", line=3)


@pytest.mark.parametrize("kind", ["[", "{a: ", "- "])
def test_ten_thousand_deep_nesting_is_located(kind: str, write) -> None:
    closing = {"[": "]", "{a: ": "}", "- ": ""}[kind]
    if kind == "- ":
        body = "".join("  " * i + "- \n" for i in range(10_000))
        text = HEAD + "vars:\n  deep:\n" + body
    else:
        text = HEAD + "vars: {deep: " + kind * 10_000 + "1" + closing * 10_000 + "}\n"
    path = write("deep.yaml", text)
    assert_located(_cli("validate", str(path)), path, "nesting")


def test_merge_keys_are_supported_with_positions(write) -> None:
    path = write("merge.yaml", HEAD + "quantizers:\n  base: &base {calibrator: histogram, num_bits: 8}\n"
                 "  act:\n    <<: *base\n    unsigned: true\n")
    loaded = load_recipe(path)
    assert loaded.spec.quantizers["act"].calibrator == "histogram" and loaded.spec.quantizers["act"].unsigned
    assert loaded.position("quantizers", "act", "calibrator").line == 4  # where the anchored mapping wrote it
    result = _cli("validate", str(path))
    assert result.exit_code == 0, result.output


def test_merged_bad_key_points_at_the_anchor(write) -> None:
    path = write("merge_bad.yaml", HEAD + "quantizers:\n  base: &base {calibrator: histogram, nmu_bits: 8}\n"
                 "  act:\n    <<: [*base]\n")
    assert_located(_cli("validate", str(path)), path, "quantizers.act.nmu_bits", "did you mean 'num_bits'", line=4)


def test_merge_key_explicit_value_wins_as_in_safe_load(write) -> None:
    text = HEAD + "vars:\n  a: &a {x: 1, y: 2}\n  b: &b {x: 3, z: 4}\n  c:\n    <<: [*a, *b]\n    y: 5\n"
    path = write("merge_order.yaml", text)
    assert load_recipe(path).spec.vars["c"] == yaml.safe_load(text)["vars"]["c"] == {"x": 1, "y": 5, "z": 4}


def test_one_member_share_group_is_located(write) -> None:
    path = write("share.yaml", HEAD + "share:\n  - [stem.0.input]\n")
    assert_located(_cli("validate", str(path)), path, "share[0]", "two or more quantizers", line=4)


@pytest.mark.parametrize(("selector", "needle"), [
    ("{type: Conv9d}", "unknown type 'Conv9d'"),
    ("{type: ':Conv2d'}", "not a class name"),
    ("{type: 'no_such_module_xyz:Thing'}", "cannot import module"),
    ("{name: 're:('}", "bad regular expression"),
])
def test_bad_selector_type_is_located(selector: str, needle: str, write) -> None:
    path = write("type.yaml", HEAD + MODEL + f"rules:\n  - select: {selector}\n    quantize: {{input: act}}\n")
    assert_located(_cli("plan", str(path)), path, "rules[0].select", needle, line=7)


# ----------------------------------------------------------------------------- item 5: denial of service
def _alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return HEAD + "vars:\n" + "".join(f"  {line}\n" for line in lines)


DOS_CASES = {
    "alias_bomb": (_alias_bomb(), "expands to more than"),
    "recursive_alias": (HEAD + "vars:\n  a: &a [*a]\n", "recursive YAML alias"),
    "recursive_mapping": (HEAD + "vars: &v\n  self: *v\n", "recursive YAML alias"),
    "power": (HEAD + "description: '{{ 9 ** (9 ** 9) }}'\n", "bits"),
    "repeat": (HEAD + "description: \"{{ 'A' * 3000000000 }}\"\n", "repetition"),
    "repeat_float": (HEAD + "description: \"{{ 'A' * 3e9 }}\"\n", "description"),
    "list_repeat": (HEAD + "description: \"{{ [0] * 10 ** 9 }}\"\n", "repetition"),
    "lipsum": (HEAD + "description: '{{ lipsum(n=200000) }}'\n", "lipsum"),
    "range": (HEAD + "description: '{{ range(10 ** 9) | list }}'\n", "range"),
    "nested_loops": (HEAD + "description: '{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}"
                     "{% endfor %}'\n", "longer than"),
    "center": (HEAD + "description: \"{{ 'x' | center(10 ** 9) }}\"\n", "center"),
    "ljust": (HEAD + "description: \"{{ 'x'.ljust(10 ** 9) }}\"\n", "ljust"),
    "percent_format": (HEAD + "description: \"{{ '%0999999999d' % 1 }}\"\n", "format string"),
    "str_format": (HEAD + "description: \"{{ '{:>999999999}'.format(1) }}\"\n", "format string"),
    "format_filter": (HEAD + "description: \"{{ '%0999999999d' | format(1) }}\"\n", "format string"),
    "big_product": (HEAD + "description: '{{ (10 ** 1000) * (10 ** 1000) * (10 ** 1000) }}'\n", "bits"),
}


@pytest.mark.parametrize("case", sorted(DOS_CASES))
def test_denial_of_service_is_refused_fast(case: str, write) -> None:
    text, needle = DOS_CASES[case]
    path = write(f"{case}.yaml", text)
    start = time.process_time()
    result = _cli("validate", str(path))
    elapsed = time.process_time() - start
    assert_located(result, path, needle)
    assert elapsed < 2.0, f"{case}: {elapsed:.2f} s"


def test_file_over_one_megabyte_is_refused_fast(write) -> None:
    path = write("big.yaml", HEAD + "description: '" + "x" * 1_100_000 + "'\n")
    start = time.process_time()
    result = _cli("validate", str(path))
    assert_located(result, path, "larger than 1000000 bytes")
    assert time.process_time() - start < 2.0


def test_file_just_under_one_megabyte_answers_in_time(write) -> None:
    items = "".join(f"  k{i}: {i}\n" for i in range(60_000))
    path = write("wide.yaml", HEAD + "vars:\n" + items)
    assert path.stat().st_size < 1_000_000
    start = time.process_time()
    result = _cli("validate", str(path))
    assert result.exit_code == 0, result.output
    assert time.process_time() - start < 2.0


# ----------------------------------------------------------------------------- item 6: silent matches, identity, types
@pytest.mark.parametrize(("selector", "key", "needle", "line"), [
    ("{name: [stem.0, stme.0]}", "rules[0].select.name[1]", "'stme.0' matches no module", 8),
    ("{type: [Conv2d, Linear]}", "rules[0].select.type[1]", "'Linear' matches no module", 8),
    ("{type: Conv2d, exclude: [merge.head, mrege.up]}", "rules[0].select.exclude[1]", "removes nothing", 7),
    ("{type: Conv2d, exclude: nothing.here}", "rules[0].select.exclude", "removes nothing", 7),
])
def test_list_entry_that_matches_nothing_is_located(selector: str, key: str, needle: str, line: int, write) -> None:
    text = HEAD + MODEL + f"rules:\n  - select: {selector}\n    quantize: {{input: act}}\n"
    if "[" in selector and "exclude" not in selector:  # one entry per line, to check the entry's own line
        inner = selector[selector.index("[") + 1: selector.index("]")].split(", ")
        field = selector[1: selector.index(":")]
        text = (HEAD + MODEL + "rules:\n  - select:\n      " + field + ":\n"
                + "".join(f"        - {entry}\n" for entry in inner) + "    quantize: {input: act}\n")
        line = 9 + 1
    path = write("lists.yaml", text)
    assert_located(_cli("plan", str(path)), path, key, needle, line=line)


def test_optional_selector_may_have_unmatched_entries(write) -> None:
    path = write("optional.yaml", HEAD + MODEL + "rules:\n  - select: {name: [stem.0, stme.0], optional: true}\n"
                 "    quantize: {input: act}\n")
    result = _cli("plan", str(path))
    assert result.exit_code == 0, result.output
    assert "stem.0" in result.output


@pytest.mark.parametrize(("tail", "key", "needle", "line"), [
    ("rules:\n  - select: nothing.here\n    quantize: {input: act}\n", "rules[0].select", "selects nothing", 7),
    ("share:\n  - [stem.0.input, nothing.input]\n", "share[0]", "matches no quantizer", 10),
    ("fuse:\n  - {pattern: [Conv2d, BatchNorm2d], within: nowhere}\n", "fuse[0].within", "selects nothing", 10),
    ("fuse:\n  - {use: no_such_pattern}\n", "fuse[0].use", "no fusion pattern", 10),
    ("disable: [no.such.layer]\n", "disable", "matches no quantizer", 9),
])
def test_run_time_selector_errors_carry_positions(tail: str, key: str, needle: str, line: int, write) -> None:
    rules = "" if tail.startswith("rules") else "rules:\n  - select: {type: Conv2d}\n    quantize: {input: act}\n"
    path = write("runtime.yaml", HEAD + MODEL + rules + tail)
    assert_located(_cli("plan", str(path)), path, key, needle, line=line)


SELECTOR_ATOMS = st.sampled_from(["stem", "stem.0", "*", "**", "?", "[", "]", "[z-a]", "[!a]", "re:", "re:(", "re:.*",
                                  ".", "..", "block.conv1", "merge.*", "{module}", "\\", "[]", "re:(a+)+"])
SELECTOR_TYPES = st.sampled_from(["Conv2d", "Conv9d", "torch.nn.Conv2d", "torch.nn:Conv2d", "os.path", "torch.nn",
                                  "tests.export.models:ResBlock", "tests.export.models:nothing", "typing:Any",
                                  "builtins:int", "torch.nn.functional:relu", "SparseConv", "SubMConv9d"])
PATTERNS = st.lists(SELECTOR_ATOMS, min_size=1, max_size=3).map("".join)


def _one_or_list(strategy):
    return strategy | st.lists(strategy, min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(selector=st.fixed_dictionaries({}, optional={
    "name": _one_or_list(PATTERNS), "type": _one_or_list(SELECTOR_TYPES), "under": PATTERNS,
    "exclude": _one_or_list(PATTERNS), "optional": st.booleans(), "exact": st.booleans()}))
def test_any_selector_selects_or_raises_recipe_error(selector: dict) -> None:
    """Selector fuzz at model-build time: a list of matches, or a RecipeError naming the selector."""
    from pydantic import ValidationError

    from recipe_engine.recipe import RecipeError
    from recipe_engine.select import select
    from tests.export.models import build_dense

    try:
        parsed = Selector.model_validate(selector)
    except ValidationError:
        return
    try:
        found = select(_DENSE.setdefault("model", build_dense()), parsed, what="rules[0].select")
    except RecipeError as exc:
        assert exc.key and exc.key[:3] == ("rules", 0, "select"), exc.format()
        return
    assert found or parsed.optional


_DENSE: dict = {}


def test_set_values_are_bounded_and_json_like(write) -> None:
    path = write("plain.yaml", HEAD)
    result = _cli("validate", str(path), "--set", "vars.x=!!set {a, b}")
    assert result.exit_code == 1 and "--set vars.x" in result.output and "Traceback" not in result.output
    bomb = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]"
                                                                  for i in range(1, 9)]) + "]"
    start = time.process_time()
    result = _cli("validate", str(path), "--set", f"vars.x={bomb}")
    assert result.exit_code == 1 and "expands to more than" in result.output
    assert time.process_time() - start < 2.0


def test_version_with_newline_is_refused(write) -> None:
    path = write("version.yaml", 'recipe: hostile\nversion: "1.0.0\\n"\n')
    assert_located(_cli("validate", str(path)), path, "version", "semantic", line=2)


@pytest.mark.parametrize("missing", ["recipe", "version", "both"])
def test_a_run_file_must_name_itself(missing: str, write) -> None:
    write("base.yaml", "recipe: base\nversion: 2.0.0\ncalibration: {method: mse}\n")
    lines = {"recipe": "recipe: child\n", "version": "version: 1.0.0\n"}
    if missing == "both":
        lines = {}
    else:
        lines.pop(missing)
    path = write("child.yaml", "".join(lines.values()) + "extends: base.yaml\n")
    assert_located(_cli("validate", str(path)), path, "missing required key", "must name itself")


def test_a_base_without_name_is_fine_through_extends(write) -> None:
    write("nameless_base.yaml", "calibration: {method: mse}\n")
    path = write("child.yaml", HEAD + "extends: nameless_base.yaml\n")
    assert load_recipe(path).spec.calibration.method == "mse"


@pytest.mark.parametrize(("value", "needle"), [
    ("!!set {a, b}", "set"),
    ("!!binary aGVsbG8=", "binary"),
    ("2024-01-01", "timestamp"),
    ("2024-01-01 10:00:00", "timestamp"),
    ("!!omap [a: 1]", "omap"),
    ("!!pairs [a: 1]", "pairs"),
    ("!!python/name:os.system", "tag"),
    ("!custom 1", "tag"),
])
def test_only_json_like_yaml_types(value: str, needle: str, write) -> None:
    path = write("types.yaml", HEAD + f"vars:\n  x: {value}\n")
    assert_located(_cli("validate", str(path)), path, needle, line=4)


def test_shipped_recipes_still_validate() -> None:
    files = sorted((ROOT / "recipes").rglob("*.yaml"))
    result = _cli("validate", *map(str, files))
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- item 7: imports listed
def test_validate_lists_every_import(write) -> None:
    path = write("imports.yaml", HEAD + "model: {factory: 'pkg.models:build'}\n"
                 "fuse:\n  - {pattern: ['pkg.layers:MyConv|Conv2d', BatchNorm2d]}\n  - {block: 'pkg.blocks:Res'}\n"
                 "  - {pattern: [Conv2d, BatchNorm2d], within: {type: 'pkg.scope:Stage'}}\n"
                 "rules:\n  - select: {type: ['pkg.sel:Thing', Conv2d, torch.nn.Linear]}\n    quantize: {input: {}}\n"
                 "share:\n  - {quantizers: ['{module}.a.input', '{module}.b.input'], for_each: {type: 'pkg.share:Blk'}}\n")
    result = _cli("validate", str(path))
    assert result.exit_code == 0, result.output
    for line in ["model.factory: pkg.models:build", "fuse[0].pattern[0]: pkg.layers:MyConv (import only)",
                 "fuse[1].block: pkg.blocks:Res", "fuse[2].within.type: pkg.scope:Stage",
                 "rules[0].select.type[0]: pkg.sel:Thing", "rules[0].select.type[2]: torch.nn.Linear",
                 "share[0].for_each.type: pkg.share:Blk"]:
        assert line in result.output, result.output
    assert "Conv2d (import only)" not in result.output  # engine-known short names import nothing new


def test_plan_lists_selector_imports(write) -> None:
    path = write("plan_imports.yaml", HEAD + MODEL + "rules:\n  - select: {type: 'torch.nn:Conv2d'}\n"
                 "    quantize: {input: act}\n")
    result = _cli("plan", str(path))
    assert result.exit_code == 0, result.output
    assert "torch.nn:Conv2d" in result.output.split("\n\n")[0]


# ----------------------------------------------------------------------------- item 8: secrets
SECRET_RECIPE = (HEAD + "vars:\n  token: \"{{ secret('RE_HOSTILE_TOKEN') }}\"\n"
                 "model:\n  factory: 'pkg:build'\n  kwargs:\n"
                 "    direct: \"{{ secret('RE_HOSTILE_TOKEN') }}\"\n"
                 "    header: \"Bearer {{ token }}\"\n"
                 "    plain: \"{{ env.RE_HOSTILE_PLAIN }}\"\n")


def test_secret_is_used_but_never_recorded(write, monkeypatch) -> None:
    path = write("secret.yaml", SECRET_RECIPE)
    monkeypatch.setenv("RE_HOSTILE_PLAIN", "visible-value")
    monkeypatch.setenv("RE_HOSTILE_TOKEN", "s3cr3t-value-1")
    first = load_recipe(path)
    kwargs = first.spec.model.kwargs
    assert kwargs["direct"] == "s3cr3t-value-1" and kwargs["header"] == "Bearer s3cr3t-value-1"  # used at run time
    lock = lock_text(first.spec)
    assert "s3cr3t-value-1" not in lock
    assert "direct: <secret:RE_HOSTILE_TOKEN>" in lock and "header: Bearer <secret:RE_HOSTILE_TOKEN>" in lock
    assert "token: <secret:RE_HOSTILE_TOKEN>" in lock  # the var too
    assert "plain: visible-value" in lock  # env is recorded, as documented
    monkeypatch.setenv("RE_HOSTILE_TOKEN", "another-value-2")
    second = load_recipe(path)
    assert second.spec.model.kwargs["direct"] == "another-value-2"
    assert second.sha256 == first.sha256  # the hash covers the secret's name, not its value
    assert diff_recipes(first.spec, second.spec) == []
    result = _cli("validate", str(path))
    assert result.exit_code == 0 and "another-value-2" not in result.output


def test_missing_secret_is_located(write, monkeypatch) -> None:
    monkeypatch.delenv("RE_HOSTILE_TOKEN", raising=False)
    monkeypatch.setenv("RE_HOSTILE_PLAIN", "x")
    path = write("secret_missing.yaml", SECRET_RECIPE)
    assert_located(_cli("validate", str(path)), path, "vars.token", "'RE_HOSTILE_TOKEN' is not set", line=4)


def test_secret_outside_code_arguments_is_refused(write, monkeypatch) -> None:
    monkeypatch.setenv("RE_HOSTILE_TOKEN", "s3cr3t-value-1")
    path = write("secret_description.yaml", HEAD + "vars: {token: \"{{ secret('RE_HOSTILE_TOKEN') }}\"}\n"
                 "description: 'uses {{ token }}'\n")
    result = _cli("validate", str(path))
    assert_located(result, path, "description", "secret()", line=4)
    assert "s3cr3t-value-1" not in result.output


# ----------------------------------------------------------------------------- fuzz: shipped recipes, mutated text
SHIPPED = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "recipes").glob("*.yaml"))}
NOISE = st.sampled_from(list("&*<>:!-[]{}|#%@`'\"\\ \n\t,?=~.0aZ") + [
    "<<: *a", "&a ", "*a", "!!set ", "!!binary ", "2024-01-01", "{{", "}}", "{%", "%}", "null", "yes", "1e9",
    ".nan", "\ufeff", "\u2028", "- ", ": ", "? ", "{{ 9 ** 99 }}", "{{ range(9) }}", "../", "/", "re:(", "Conv9d"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SHIPPED)), edits=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 8), st.lists(NOISE, max_size=4).map("".join)),
    min_size=1, max_size=4))
def test_mutated_shipped_recipes_never_traceback(name: str, edits) -> None:
    text = SHIPPED[name]
    for where, cut, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + cut:]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "recipes", tmp, dirs_exist_ok=True)
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        result = _cli("validate", str(path))
        assert result.exit_code in (0, 1) and "Traceback" not in result.output
        if result.exit_code == 1:  # located in the mutated file or in the (intact) file it extends
            assert re.search(re.escape(tmp) + r"/\S+(:\d+:\d+:|: )", result.output), result.output
