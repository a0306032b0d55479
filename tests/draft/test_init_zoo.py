"""`recipe init` on the zoo models: the draft finds what the hand-written recipes declare, and passes plan."""

from __future__ import annotations

from pathlib import Path

import yaml

from recipe_engine import data as data_mod
from recipe_engine.draft import draft_recipe, start_from_file
from recipe_engine.fuse import apply_fusions
from recipe_engine.pipeline import plan_recipe
from recipe_engine.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]


def _hand_written(name: str) -> tuple[int, list[set[str]]]:
    """Fusions (both phases) and resolved share groups of a shipped recipe."""
    loaded = load_recipe(ROOT / "recipes" / name)
    plan = plan_recipe(loaded)
    model = data_mod.build_model(loaded)
    fusions = len(apply_fusions(model, loaded.spec, "before_calibration"))
    fusions += len(apply_fusions(model, loaded.spec, "before_export"))
    return fusions, [set(g) for g in plan.shares]


def _draft(name: str, tmp_path: Path):
    out = tmp_path / "draft.yaml"
    result = draft_recipe(start_from_file(ROOT / "recipes" / name), out)
    text = out.read_text()
    return result, text, yaml.safe_load(text)


def _live(result, key: str) -> list:
    section = next(s for s in result.sections if s.key == key)
    return [e.value for e in section.entries if e.commented is None]


def test_digits_draft(tmp_path: Path) -> None:
    result, text, body = _draft("digits_int8.yaml", tmp_path)
    fusions, shares = _hand_written("digits_int8.yaml")
    assert len(result.plan.fusions) == result.expected_fusions == fusions == 6
    assert body["extends"] == "base/int8_tensorrt.yaml"
    assert {"select": {"type": "recipe_engine.zoo.digits:ResidualBlock"}, "ops": {"add": "act"}} in body["rules"]
    assert {"block": "recipe_engine.zoo.digits:ResidualBlock"} in body["fuse"]
    groups = [set(g) for g in result.plan.shares]
    assert {"block2.conv1.input", "block2.downsample.0.input"} in groups  # one tensor, two convs
    # a dense add's operand tied to conv1's input is only a suggestion (it mixes two distributions)
    assert {"block1.conv1.input", "block1.add0"} not in groups
    assert "# - [block1.add0, block1.conv1.input]" in text
    assert body["disable"] == ["fc"]
    assert [e["format"] for e in body["export"]] == ["onnx-qdq", "tensorrt"]
    assert text.count("\n  # ") > 10  # every entry carries its reasons
    load_recipe(tmp_path / "draft.yaml")  # the engine's loader reads it back


def test_centerpoint_draft_matches_the_hand_written_recipe(tmp_path: Path) -> None:
    result, text, body = _draft("centerpoint_int8.yaml", tmp_path)
    fusions, shares = _hand_written("centerpoint_int8.yaml")
    assert len(result.plan.fusions) == fusions == 31  # hand-written: 30 before calibration + conv_input at export
    assert body["fuse"][0] == {"pattern": ["SparseConv3d|SubMConv3d", "BatchNorm1d", "ReLU"]}
    sites = [n for n in result.plan.quantizers if n.rsplit(".", 1)[-1] in ("add0", "cat0")]
    assert len(sites) == 9  # 8 SparseBasicBlock adds + the SECONDFPN concat
    groups = [set(g) for g in result.plan.shares]
    missing = [g for g in shares if g not in groups]
    assert not missing, missing  # every hand-written share group is drafted
    assert {"for_each": {"type": "recipe_engine.zoo.sparse_encoder:SparseBasicBlock"},
            "quantizers": ["{module}.add0", "{module}.conv1.input"]} in body["share"]
    assert body["disable"][0] == "encoder.conv_input.0"  # the first sparse layer
    exports = _live(result, "export")
    assert [(e["format"], e.get("module")) for e in exports] == [
        ("onnx-sparse", "encoder"), ("onnx-qdq", "bev"), ("tensorrt", None)]


def test_bevfusion_draft_matches_the_hand_written_share_groups(tmp_path: Path) -> None:
    result, text, body = _draft("bevfusion_int8.yaml", tmp_path)
    fusions, shares = _hand_written("bevfusion_int8.yaml")
    assert len(result.plan.fusions) == fusions
    groups = [set(g) for g in result.plan.shares]
    assert [g for g in shares if g not in groups] == []
    assert {"block": "recipe_engine.zoo.camera:ResNetLite"} in body["fuse"]  # the stem's conv1/bn1
    formats = {(e["format"], e.get("module")) for e in _live(result, "export")}
    assert {("onnx-sparse", "lidar"), ("onnx-qdq", "camera"), ("onnx-qdq", "bev")} <= formats
    assert "# - format: onnx-qdq\n  #   module: vtransform" in text  # index_add_: not exportable, and why
    assert "index_add_" in text
