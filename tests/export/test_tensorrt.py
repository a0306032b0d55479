"""TensorRT 10/11 dispatch without a GPU, and the real build on a GPU machine."""

from __future__ import annotations

import types

import pytest

from recipe_engine.export import tensorrt as trt_export
from recipe_engine.recipe.errors import RecipeError


def fake_trt(version: str) -> types.SimpleNamespace:
    """FAKE `tensorrt` module: only a version and the enum members the flag dispatch reads.
    It checks which flags are chosen per version, nothing about TensorRT itself."""
    flag = types.SimpleNamespace(INT8="BuilderFlag.INT8", FP16="BuilderFlag.FP16")
    creation = types.SimpleNamespace(STRONGLY_TYPED=1)  # its value in TensorRT 10; the code reads the real one
    return types.SimpleNamespace(__version__=version, BuilderFlag=flag, NetworkDefinitionCreationFlag=creation)


@pytest.mark.parametrize(("version", "network", "flags"), [
    ("10.13.3.9", 0, ["BuilderFlag.INT8", "BuilderFlag.FP16"]),
    ("10.0.1", 0, ["BuilderFlag.INT8", "BuilderFlag.FP16"]),
    ("11.4.0.106", 1 << 1, []),
    ("12.0.0", 1 << 1, []),
])
def test_flags_per_version(version: str, network: int, flags: list[str]) -> None:
    trt = fake_trt(version)
    assert trt_export.network_flags(trt) == network
    assert trt_export.builder_flags(trt) == flags
    assert trt_export.strongly_typed(version) is (network != 0)


def test_old_tensorrt_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"TensorRT 8\.6\.1 is too old; install TensorRT 10 or 11"):
        trt_export.network_flags(fake_trt("8.6.1"))


def test_trtexec_command_per_version() -> None:
    profile = {"x": {"min": [1, 3], "opt": [4, 3], "max": [4, 3]}}
    ten = trt_export.trtexec_command("a.onnx", "a.engine", 2.0, profile, True, "10.13.3.9")
    eleven = trt_export.trtexec_command("a.onnx", "a.engine", 2.0, profile, True, "11.4.0.106")
    assert "--int8 --fp16" in ten and "--stronglyTyped" not in ten
    assert "--stronglyTyped" in eleven and "--int8" not in eleven and "--fp16" not in eleven
    assert trt_export.trtexec_command("a.onnx", "a.engine", 2.0, profile, False) == \
        "trtexec --onnx=a.onnx --saveEngine=a.engine --int8 --fp16 --memPoolSize=workspace:2048"
    assert trt_export.network_kind("11.0") == "strongly typed" and trt_export.network_kind(None).endswith("flags")


@pytest.mark.skipif(trt_export.availability() is not None,
                    reason=f"real TensorRT build needs a GPU and TensorRT: {trt_export.availability()}")
def test_real_engine_matches_pytorch(tmp_path) -> None:  # pragma: no cover - GPU machines only
    from recipe_engine.export.runner import export
    from recipe_engine.pipeline import prepare
    from tests.export.models import build_dense, dense_batches, dense_recipe

    recipe = dense_recipe(export=[{"format": "onnx-qdq", "path": "net.onnx"},
                                  {"format": "tensorrt", "path": "net.engine", "source": "net.onnx", "required": True}])
    model, batches = build_dense(), dense_batches()
    prepare(model, recipe, batches)
    _, engine = export(model, recipe, tmp_path, batches)
    assert engine["status"] == "ok" and engine["sqnr_loss_db"] <= 0.5 and engine["systematic_db"] < -10
