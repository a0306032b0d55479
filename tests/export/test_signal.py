"""Verification by signal: rounding chaos passes with the default margin, a scale or layout bug fails."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from recipe_engine.export import runner
from recipe_engine.export.runner import export
from recipe_engine.export.signal_check import (
    SYSTEMATIC_DB,
    problems,
    signal_figures,
    sqnr_db,
    summarize_signal,
)
from recipe_engine.pipeline import load_recipe_data, prepare
from recipe_engine.recipe.errors import RecipeError
from tests.export.models import ResBlock, build_sparse, forward_batch, sparse_recipe, voxel_batches
from tests.helpers import randomize_bn


# ----------------------------------------------------------------------------- the statistics alone
def _signals(seed: int = 0, shape=(4, 8, 32, 32)):
    """FP32 output, two int8 simulations of it (two realizations of the rounding noise, ~29 dB), the step."""
    rng = np.random.default_rng(seed)
    fp32 = rng.standard_normal(shape)
    step = (fp32.max() - fp32.min()) / 255
    pytorch = np.round(fp32 / step) * step + rng.normal(0, step, shape)
    chaos = np.round(fp32 / step) * step + rng.normal(0, step, shape)  # what a faithful runtime computes
    return fp32, pytorch, chaos, step


def test_rounding_chaos_is_not_systematic() -> None:
    fp32, pytorch, chaos, step = _signals()
    figures = signal_figures(chaos, pytorch, fp32)
    assert figures["frac_over_1_step"] > 0.45 and figures["max_diff_steps"] > 6  # far beyond any step tolerance
    assert abs(figures["sqnr_loss_db"]) < 0.05 and figures["systematic_db"] < -25 and abs(figures["bias_steps"]) < 0.03
    assert problems(summarize_signal([figures], ["out"], 0.5), 0.5) == []


@pytest.mark.parametrize("bug", ["gain", "offset", "channel", "gain_in_chaos"])
def test_systematic_errors_fail(bug: str) -> None:
    fp32, pytorch, chaos, step = _signals(1)
    runtime = pytorch.copy()
    if bug == "gain":
        runtime *= 1.02  # a scale 2 % off
    elif bug == "offset":
        runtime += 0.35 * step  # a zero point off by a third of an output step: within the SQNR margin
    elif bug == "channel":
        runtime[:, 3] *= 1.05  # one channel's scale
    else:
        runtime = chaos * 1.02
    summary = summarize_signal([signal_figures(runtime, pytorch, fp32)], ["out"], 0.5)
    assert summary["systematic_db"] > SYSTEMATIC_DB
    assert any("systematic error" in p for p in problems(summary, 0.5))
    if bug == "offset":
        assert summary["sqnr_loss_db"] < 0.5 and summary["outputs"][0]["bias_steps"] == pytest.approx(0.35, abs=0.01)


def test_sqnr_is_capped_and_nonfinite_fails() -> None:
    x = np.linspace(-1, 1, 1000)
    assert sqnr_db(x, x) == 60.0 and sqnr_db(x + 1e-9, x) == 60.0
    assert sqnr_db(x * 1.1, x) == pytest.approx(20.0, abs=1e-6)
    bad = x.copy()
    bad[3] = np.nan
    summary = summarize_signal([signal_figures(bad, x, x)], ["out"], 0.5)
    assert len(problems(summary, 0.5)) == 2


# ----------------------------------------------------------------------------- a deep random-weight net
class DeepNet(nn.Module):
    """12 residual blocks of random weights (~26 quantized convs, 12 add sites)."""

    def __init__(self, blocks: int = 12, c: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock(c) for _ in range(blocks)])
        self.head = nn.Conv2d(c, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


DEEP_RECIPE = {
    "recipe": "deep", "version": "1.0.0",
    "quantizers": {"act": {"calibrator": "max"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d", "BatchNorm2d"]}, {"block": "tests.export.models:ResBlock"}],
    "rules": [{"select": {"type": "Conv2d"}, "quantize": {"input": "act", "weight": "w"}},
              {"select": {"type": "tests.export.models:ResBlock"}, "ops": {"add": "act"}}],
    "calibration": {"method": "max"},
    "export": [{"format": "onnx-qdq", "path": "deep.onnx"}],
}


@pytest.fixture(scope="module")
def deep():
    torch.manual_seed(0)
    model = DeepNet().eval()
    randomize_bn(model, 0)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 16, 16, generator=generator) for _ in range(3)]
    prepare(model, DEEP_RECIPE, batches)
    return model, batches


def test_deep_random_net_passes_with_default_margin(deep, tmp_path) -> None:
    model, batches = deep
    (result,) = export(model, DEEP_RECIPE, tmp_path, batches)
    # rounding chaos: the old step check (4 steps, 5 % of elements) would have failed this faithful export
    assert result["status"] == "ok" and result["max_diff_steps"] > 4 and result["frac_over_1_step"] > 0.3
    assert abs(result["sqnr_runtime_db"] - result["sqnr_pytorch_db"]) < 0.2 and result["sqnr_pytorch_db"] > 20
    assert result["systematic_db"] < -20 and result["margin_db"] == 0.5


def _tampered(kind: str):
    """run_onnxruntime on a file with a bug: the last weight's DQ scale 1 % off, or a 3x3 weight transposed."""
    real = runner.run_onnxruntime

    def run(model_bytes: bytes, feeds: dict, *args, **kwargs):
        model = onnx.load_from_string(model_bytes)
        inits = {t.name: t for t in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in producers
                     and producers[n.input[0]].input[0] in inits]
        if kind == "scale":
            scale = numpy_helper.to_array(inits[weight_dq[-1].input[1]]) * np.float32(1.01)
            model.graph.initializer.append(numpy_helper.from_array(scale, "tampered_scale"))
            weight_dq[-1].input[1] = "tampered_scale"
        else:
            tensor = inits[producers[weight_dq[len(weight_dq) // 2].input[0]].input[0]]
            swapped = np.ascontiguousarray(numpy_helper.to_array(tensor).transpose(0, 1, 3, 2))
            tensor.CopyFrom(numpy_helper.from_array(swapped, tensor.name))
        return real(model.SerializeToString(), feeds, *args, **kwargs)
    return run


@pytest.mark.parametrize(("kind", "message"), [("scale", r"systematic error .* above -10 dB"),
                                               ("layout", r"dB below PyTorch fake-quant .* margin of 0\.5 dB")])
def test_wrong_scale_or_weight_layout_fails(deep, tmp_path, monkeypatch, kind: str, message: str) -> None:
    model, batches = deep
    monkeypatch.setattr(runner, "run_onnxruntime", _tampered(kind))
    with pytest.raises(RecipeError, match=r"export\[0\]: deep\.onnx: onnxruntime is not faithful .*" + message):
        export(model, DEEP_RECIPE, tmp_path, batches)
    assert not (tmp_path / "deep.onnx").exists()


def test_sparse_runtime_with_swapped_kernel_axes_fails(tmp_path, monkeypatch) -> None:
    recipe = sparse_recipe(export=[{"format": "onnx-sparse", "module": "encoder", "path": "scn.onnx"}])
    model, batches = build_sparse(), voxel_batches()
    prepare(model, recipe, batches, forward_batch)
    (good,) = export(model, recipe, tmp_path / "good", batches, forward_batch)
    assert good["status"] == "ok" and good["sqnr_loss_db"] <= 0.5 and good["systematic_db"] < -10
    real = runner.run_sparse_runtime

    def swapped(scn: onnx.ModelProto, *args, **kwargs):
        scn = onnx.ModelProto.FromString(scn.SerializeToString())
        conv = next(n for n in scn.graph.node if n.op_type == "SparseConvolution" and "block" in n.name)
        weight = next(t for t in scn.graph.initializer if t.name == conv.input[1])  # [O, kz, ky, kx, I]
        flipped = np.ascontiguousarray(numpy_helper.to_array(weight).transpose(0, 3, 2, 1, 4))  # xyz read as zyx
        weight.CopyFrom(numpy_helper.from_array(flipped, weight.name))
        return real(scn, *args, **kwargs)

    monkeypatch.setattr(runner, "run_sparse_runtime", swapped)
    with pytest.raises(RecipeError, match=r"scn\.onnx: the sparse reference runtime is not faithful"):
        export(model, recipe, tmp_path / "bad", batches, forward_batch)


def test_removed_step_tolerances_are_explained() -> None:
    for key, value in (("tolerance", 12), ("max_fraction", 0.3)):
        recipe = {**DEEP_RECIPE, "export": [{"format": "onnx-qdq", "path": "d.onnx", key: value}]}
        with pytest.raises(RecipeError, match=rf"export\[0\]: `{key}` was removed: .*use `margin_db`"):
            load_recipe_data(recipe)
