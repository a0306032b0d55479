"""Architecture contracts of the zoo models: layer paths/types, shapes, CPU backward."""

from __future__ import annotations

import inspect

import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from recipe_engine.zoo import bevfusion, centerpoint, digits
from recipe_engine.zoo.camera import Bottleneck
from recipe_engine.zoo.sparse_encoder import SparseBasicBlock

CP_PATHS = {
    "encoder.conv_input.0": spconv.SubMConv3d,
    "encoder.conv_input.1": nn.BatchNorm1d,
    "encoder.conv1.0": SparseBasicBlock,
    "encoder.conv1.0.conv1": spconv.SubMConv3d,
    "encoder.conv1.0.bn1": nn.BatchNorm1d,
    "encoder.conv1.1.conv2": spconv.SubMConv3d,
    "encoder.conv2.0": spconv.SparseConv3d,
    "encoder.conv2.3.conv1": spconv.SubMConv3d,
    "encoder.conv3.0": spconv.SparseConv3d,
    "encoder.conv4.0": spconv.SparseConv3d,
    "encoder.conv4.4.bn2": nn.BatchNorm1d,
    "encoder.extra_conv.0": spconv.SparseConv3d,
    "bev.backbone.blocks.0.0": nn.Conv2d,
    "bev.backbone.blocks.1.0": nn.Conv2d,
    "bev.neck.deblocks.0.0": nn.ConvTranspose2d,
    "bev.neck.deblocks.1.0": nn.ConvTranspose2d,
    "bev.head.shared_conv.0": nn.Conv2d,
    "bev.head.task_head.3": nn.Conv2d,
}
BF_PATHS = {
    **{k.replace("encoder.", "lidar.", 1): v for k, v in CP_PATHS.items() if k.startswith("encoder.")},
    "camera.backbone.conv1": nn.Conv2d,
    "camera.backbone.layer1.0": Bottleneck,
    "camera.backbone.layer1.0.conv3": nn.Conv2d,
    "camera.backbone.layer1.0.downsample.0": nn.Conv2d,
    "camera.backbone.layer2.0.downsample.1": nn.BatchNorm2d,
    "camera.backbone.layer3.1.conv2": nn.Conv2d,
    "camera.neck.lateral_convs.0.0": nn.Conv2d,
    "camera.neck.fpn_convs.0.0": nn.Conv2d,
    "vtransform.depthnet": nn.Conv2d,
    "vtransform.downsample.0": nn.Conv2d,
    "bev.fuser.0": nn.Conv2d,
    "bev.decoder.backbone.blocks.1.0": nn.Conv2d,
    "bev.decoder.neck.deblocks.1.0": nn.ConvTranspose2d,
    "bev.head.task_head.3": nn.Conv2d,
}
DIGITS_PATHS = {"stem.0": nn.Conv2d, "block1.conv1": nn.Conv2d, "block1.conv2": nn.Conv2d,
                "block2.downsample.0": nn.Conv2d, "fc": nn.Linear}


@pytest.mark.parametrize(("mod", "paths"), [(centerpoint, CP_PATHS), (bevfusion, BF_PATHS), (digits, DIGITS_PATHS)])
def test_layer_paths(mod, paths) -> None:
    named = dict(mod.build().named_modules())
    for path, cls in paths.items():
        assert isinstance(named[path], cls), path


def test_sparse_convs_have_no_bias_and_are_followed_by_bn() -> None:
    model = centerpoint.build()
    convs = [m for m in model.modules() if isinstance(m, spconv.conv.SparseConvolution)]
    assert len(convs) == 1 + 8 * 2 + 4
    assert all(c.bias is None for c in convs)
    assert model.encoder.conv4[0].padding == [0, 1, 1] or tuple(model.encoder.conv4[0].padding) == (0, 1, 1)
    keys = {c.indice_key for c in convs}
    assert {"subm1", "res1", "res2", "res3", "res4"} <= keys


def test_residual_adds_are_plain_adds() -> None:
    assert "out.replace_feature(out.features + identity.features)" in inspect.getsource(SparseBasicBlock.forward)
    assert "out = out + identity" in inspect.getsource(Bottleneck.forward)
    assert "out = out + identity" in inspect.getsource(digits.ResidualBlock.forward)
    assert model_has_no_downsample(Bottleneck)


def model_has_no_downsample(cls) -> bool:
    blocks = [m for m in bevfusion.build().modules() if isinstance(m, cls)]
    return any(b.downsample is None for b in blocks) and any(b.downsample is not None for b in blocks)


def test_centerpoint_shapes_and_cpu_backward() -> None:
    torch.manual_seed(0)
    model = centerpoint.build()
    batch = centerpoint.make_batch([11, 12])
    bev = model.encoder(batch["voxel_features"], batch["coors"], 2)
    assert bev.shape == (2, model.encoder.out_channels, 16, 16)
    out = model.bev(bev)
    assert out.shape == (2, 5, 32, 32)
    loss = centerpoint.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.encoder.conv_input[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # eval mode on CPU: spconv rejects fused bias/act, so none may be set
        assert centerpoint.forward_batch(model, batch).shape == (2, 5, 32, 32)


def test_bevfusion_shapes() -> None:
    model = bevfusion.build().eval()
    batch = bevfusion.make_batch([21])
    assert batch["images"].shape == (1, 2, 3, 64, 176)
    with torch.no_grad():
        feats = model.camera(batch["images"])
        assert feats.shape == (1, 2, 64, 8, 22)
        cam_bev = model.vtransform(feats)
        assert cam_bev.shape == (1, 32, 16, 16)
        lidar_bev = model.lidar(batch["voxel_features"], batch["coors"], 1)
        out = model.bev(cam_bev, lidar_bev)
    assert out.shape == (1, 5, 32, 32)
    assert torch.allclose(out, bevfusion.forward_batch(model, batch), atol=1e-5)


def test_data_factories_are_reiterable() -> None:
    calib = centerpoint.calibration_data(count=6, batch_size=4)
    assert len(calib) == 2 and int(calib[1]["batch_size"]) == 2
    first = [b["voxel_features"] for b in calib]
    again = [b["voxel_features"] for b in calib]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    uncached = centerpoint.train_data(count=4, batch_size=4)
    assert torch.equal(uncached[0]["coors"], uncached[0]["coors"])
    d = digits.calibration_data(count=100, batch_size=64)
    assert [len(b["label"]) for b in d] == [64, 36]


def test_digits_splits_disjoint() -> None:
    train, calib, test = (set(digits.split_indices(s).tolist()) for s in ("train", "calib", "test"))
    assert not train & test and calib <= train
    assert len(test) == digits.NUM_TEST and len(train) + len(test) == 1797
