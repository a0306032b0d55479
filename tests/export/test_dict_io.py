"""Modules that pass a batch_dict (OpenPCDet / mmdet3d style): exportable by naming inputs and outputs,
and checked by `recipe plan` / the start of `recipe run` before any calibration."""

from __future__ import annotations

import json

import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from recipe_engine import pipeline
from recipe_engine.pipeline import plan_recipe, run_recipe
from recipe_engine.recipe.errors import RecipeError
from recipe_engine.recipe.loader import load_recipe
from tests.export.models import voxel_batches

SHAPE = [9, 16, 16]


class Backbone3d(nn.Module):
    """Reads voxel_features/voxel_coords/batch_size from the batch_dict, writes spatial_features."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv_input = spconv.SparseSequential(spconv.SubMConv3d(4, c, 3, padding=1, indice_key="subm1"), nn.ReLU())
        self.conv1 = spconv.SparseSequential(spconv.SubMConv3d(c, c, 3, padding=1, indice_key="subm1"), nn.ReLU())
        self.down = spconv.SparseSequential(spconv.SparseConv3d(c, c, 3, stride=(2, 1, 1), padding=1), nn.ReLU())

    def forward(self, batch_dict: dict) -> dict:
        x = spconv.SparseConvTensor(batch_dict["voxel_features"], batch_dict["voxel_coords"].int(), SHAPE,
                                    batch_dict["batch_size"])
        dense = self.down(self.conv1(self.conv_input(x))).dense()
        n, c, d, h, w = dense.shape
        batch_dict["spatial_features"] = dense.view(n, c * d, h, w)
        return batch_dict


class DenseHead(nn.Module):
    """Reads spatial_features, writes heatmap (a dict in, a dict out)."""

    def __init__(self, c: int = 40):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, batch_dict: dict) -> dict:
        batch_dict["heatmap"] = self.conv(batch_dict["spatial_features"])
        return batch_dict


class DictDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone_3d = Backbone3d()
        self.dense_head = DenseHead()

    def forward(self, batch_dict: dict) -> torch.Tensor:
        for module in (self.backbone_3d, self.dense_head):
            batch_dict = module(batch_dict)
        return batch_dict["heatmap"]


def build() -> DictDetector:
    torch.manual_seed(0)
    return DictDetector().eval()


def batches() -> list[dict]:
    return [{"voxel_features": b["voxel_features"], "voxel_coords": b["coors"], "batch_size": b["batch_size"],
             "frame_id": "synthetic"} for b in voxel_batches(count=2)]


def forward(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(dict(batch))  # the modules write into the dict


RECIPE = """
recipe: dict-io
version: 1.0.0
model: {factory: "tests.export.test_dict_io:build"}
data:
  calibration: {factory: "tests.export.test_dict_io:batches"}
  forward: "tests.export.test_dict_io:forward"
quantizers: {act: {calibrator: max}, w: {per_channel: true}}
# libspconv feeds the voxel features in fp16: the layer reading them stays fp16, as in NVIDIA's exporters
disable: [backbone_3d.conv_input.0]
rules:
  - select: {type: [SubMConv3d, SparseConv3d, Conv2d]}
    quantize: {input: act, weight: w}
calibration: {method: max}
export:
"""
SPARSE = "  - {format: onnx-sparse, module: backbone_3d, path: scn.onnx%s}\n"
DENSE = "  - {format: onnx-qdq, module: dense_head, path: head.onnx%s}\n"
SPARSE_IO = (", inputs: {voxel_features: batch_dict.voxel_features, voxel_coords: batch_dict.voxel_coords},"
             " outputs: [spatial_features]")
DENSE_IO = ", inputs: {spatial_features: batch_dict.spatial_features}, outputs: [heatmap]"


@pytest.fixture
def no_calibration(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("calibration ran before the export check")
    monkeypatch.setattr(pipeline, "calibrate", refuse)


@pytest.mark.parametrize("missing", ["sparse", "dense"])
def test_missing_mapping_fails_before_calibration(write, tmp_path, no_calibration, missing: str) -> None:
    text = RECIPE + (SPARSE % ("" if missing == "sparse" else SPARSE_IO)) + (DENSE % ("" if missing == "dense"
                                                                                      else DENSE_IO))
    path = write("r.yaml", text)
    line = 15 if missing == "sparse" else 16
    for run in (lambda: plan_recipe(load_recipe(path)), lambda: run_recipe(load_recipe(path), tmp_path / "run",
                                                                            show_progress=False)):
        with pytest.raises(RecipeError) as info:
            run()
        message = str(info.value)
        assert f"r.yaml:{line}:" in message and f"export[{0 if missing == 'sparse' else 1}].module" in message
        assert "forward takes a dict; ONNX needs tensors" in message
        assert "hint: name the tensors it reads in the export entry, e.g. inputs: {voxel_features: " \
               "batch_dict.voxel_features, voxel_coords: batch_dict.voxel_coords" in message
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unnamed_tensor_read_is_an_error(write, no_calibration) -> None:
    partial = ", inputs: {voxel_features: batch_dict.voxel_features}, outputs: [spatial_features]"
    path = write("r.yaml", RECIPE + SPARSE % partial)
    with pytest.raises(RecipeError, match=r"(?s)r\.yaml:15:\d+: export\[0\]\.inputs: .*reads batch_dict\.voxel_coords, "
                                          r"which `inputs` does not name.*"
                                          r"hint: add voxel_coords: batch_dict\.voxel_coords"):
        plan_recipe(load_recipe(path))
    wrong = ", inputs: {voxel_features: batch_dict.features}, outputs: [spatial_features]"
    with pytest.raises(RecipeError, match=r"inputs\.voxel_features: 'batch_dict\.features': batch_dict has no key "
                                          r"'features'"):
        plan_recipe(load_recipe(write("w.yaml", RECIPE + SPARSE % wrong)))


def test_mapped_dict_modules_export_and_verify(write, tmp_path) -> None:
    path = write("r.yaml", RECIPE + SPARSE % SPARSE_IO + DENSE % DENSE_IO)
    plan_recipe(load_recipe(path))  # passes
    metrics = run_recipe(load_recipe(path), tmp_path / "run", show_progress=False)
    scn, head = metrics["exports"]
    for result in (scn, head):
        assert result["status"] == "ok" and result["sqnr_loss_db"] <= 0.5 and result["systematic_db"] < -10
        assert result["sqnr_pytorch_db"] > 20
    assert scn["int8_convs"] == 2 and scn["fp16_convs"] == 1 and head["inputs"] == {"spatial_features": [2, 40, 16, 16]}
    assert head["output_names"] == ["heatmap"]
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [e["path"] for e in on_disk["exports"]] == ["scn.onnx", "head.onnx"]


def test_wrong_output_path_is_located(write, no_calibration) -> None:
    wrong = ", inputs: {voxel_features: batch_dict.voxel_features, voxel_coords: batch_dict.voxel_coords}, " \
            "outputs: [spatial]"
    with pytest.raises(RecipeError, match=r"(?s)r\.yaml:15:\d+: export\[0\]\.outputs: .*'spatial': the output has no "
                                          r"key 'spatial'.*hint: tensors of the output: .*spatial_features"):
        plan_recipe(load_recipe(write("r.yaml", RECIPE + SPARSE % wrong)))
