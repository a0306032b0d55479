"""`recipe init` on an OpenPCDet-style model (every module takes and returns the batch_dict): the
drafted exports name the tensors each module reads and writes, so they pass `recipe plan` and
`recipe run` verifies them (before, every such export was left out as a comment)."""

from __future__ import annotations

import json

import spconv.pytorch as spconv
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from recipe_engine.cli import main
from recipe_engine.draft.dict_io import infer_mapping
from tests.export.models import voxel_batches

M = "tests.draft.test_init_dict_io"
SHAPE = [9, 16, 16]


class Backbone3d(nn.Module):
    """OpenPCDet's backbone_3d + map_to_bev in one module: batch_dict in, spatial_features written."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv_input = spconv.SparseSequential(spconv.SubMConv3d(4, c, 3, padding=1, bias=False,
                                                                    indice_key="subm1"), nn.BatchNorm1d(c), nn.ReLU())
        self.down = spconv.SparseSequential(spconv.SparseConv3d(c, c, 3, stride=(2, 1, 1), padding=1, bias=False),
                                            nn.BatchNorm1d(c), nn.ReLU())

    def forward(self, batch_dict: dict) -> dict:
        x = spconv.SparseConvTensor(batch_dict["voxel_features"], batch_dict["voxel_coords"].int(), SHAPE,
                                    batch_dict["batch_size"])
        dense = self.down(self.conv_input(x)).dense()
        n, c, d, h, w = dense.shape
        batch_dict["spatial_features"] = dense.view(n, c * d, h, w)
        return batch_dict


class DenseHead(nn.Module):
    def __init__(self, c: int = 40):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 3, 1))

    def forward(self, batch_dict: dict) -> dict:
        batch_dict["heatmap"] = self.conv(batch_dict["spatial_features"])
        return batch_dict


class DictDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone_3d = Backbone3d()
        self.dense_head = DenseHead()

    def forward(self, batch_dict: dict) -> dict:
        for module in (self.backbone_3d, self.dense_head):
            batch_dict = module(batch_dict)
        return batch_dict


def build() -> DictDetector:
    torch.manual_seed(0)
    model = DictDetector()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def batches() -> list[dict]:
    return [{"voxel_features": b["voxel_features"], "voxel_coords": b["coors"], "batch_size": b["batch_size"],
             "frame_id": "synthetic"} for b in voxel_batches(count=2)]


def forward(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(dict(batch))["heatmap"]  # the modules write into the dict


def test_init_drafts_inputs_and_outputs_and_the_run_verifies_them(tmp_path) -> None:
    draft = tmp_path / "draft.yaml"
    result = CliRunner().invoke(main, ["init", "--model", f"{M}:build", "--data", f"{M}:batches", "--forward",
                                       f"{M}:forward", "--name", "dict-draft", "-o", str(draft)])
    assert result.exit_code == 0, result.output
    exports = {e["path"]: e for e in yaml.safe_load(draft.read_text())["export"]}
    assert exports["backbone_3d_scn.onnx"]["inputs"] == {"voxel_features": "batch_dict.voxel_features",
                                                         "voxel_coords": "batch_dict.voxel_coords"}
    assert exports["backbone_3d_scn.onnx"]["outputs"] == ["spatial_features"]
    assert exports["dense_head.onnx"]["inputs"] == {"spatial_features": "batch_dict.spatial_features"}
    assert exports["dense_head.onnx"]["outputs"] == ["heatmap"]
    assert "takes a dict: the file takes the tensors it read" in draft.read_text()
    out = tmp_path / "run"
    done = CliRunner().invoke(main, ["run", str(draft), "--out", str(out), "--quiet"])
    assert done.exit_code == 0, done.output
    status = {e["path"]: e["status"] for e in json.loads((out / "metrics.json").read_text())["exports"]}
    assert status["backbone_3d_scn.onnx"] == "ok" and status["dense_head.onnx"] == "ok", status


def test_a_key_the_module_does_not_read_is_not_an_input() -> None:
    batch = {"spatial_features": batches()[0]["voxel_features"].new_zeros(1, 40, 4, 4),
             "unused": batches()[0]["voxel_features"], "frame_id": "x"}
    inputs, outputs = infer_mapping(DenseHead().eval(), (batch,), {})
    assert inputs == {"spatial_features": "batch_dict.spatial_features"} and outputs == ["heatmap"]
    assert "heatmap" not in batch  # the module wrote into a copy, not into the captured call


def test_a_module_without_a_dict_gets_no_mapping() -> None:
    assert infer_mapping(torch.nn.Conv2d(1, 1, 1), (torch.zeros(1, 1, 2, 2),), {}) is None
