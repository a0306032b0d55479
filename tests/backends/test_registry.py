"""Registries keyed by name: backends and amax methods, built-ins registered as an extension would be."""

from __future__ import annotations

import pytest

from recipe_engine import backends
from recipe_engine.backends.pytorch_quantization import BACKEND as PQ
from recipe_engine.calib import methods
from recipe_engine.pipeline import apply, calibrate
from recipe_engine.quant import backend
from recipe_engine.recipe import RecipeError, load_recipe
from tests.helpers import build_dense, dense_batches

RECIPE = {
    "recipe": "tiny", "version": "1.0.0",
    "quantizers": {"act": {"calibrator": "histogram", "method": "entropy"}, "w": {"per_channel": True},
                   "fixed": {"amax": 3.0}},
    "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}},
              {"select": "head", "quantize": {"input": "fixed"}}],
    "calibration": {"method": "percentile"},
}


def test_builtins_are_registered_by_name_and_load_lazily() -> None:
    assert {"pytorch-quantization", "modelopt"} <= set(backends.registered())
    assert backends.get() is PQ and backends.get("pytorch-quantization") is PQ
    with pytest.raises(backends.UnknownBackendError, match="unknown backend 'nope'"):
        backends.get("nope")


def test_an_extension_backend_is_used_by_a_recipe_like_a_builtin() -> None:
    backends.register("pq-alias", "recipe_engine.backends.pytorch_quantization:BACKEND")
    try:
        model = build_dense()
        batches = dense_batches()
        state = apply(model, {**RECIPE, "backend": "pq-alias"}, batches)
        assert state.backend == "pq-alias"
        calibrate(model, RECIPE, batches)
        assert all(backends.backend_of(q) is PQ for q in state.quantizers.values())
    finally:
        backends.unregister("pq-alias")


def test_recipe_settings_live_in_the_engine_state_not_on_quantizers() -> None:
    model = build_dense()
    batches = dense_batches()
    state = apply(model, RECIPE, batches)
    result = calibrate(model, RECIPE, batches)
    for quantizer in state.quantizers.values():
        assert not any(k.startswith("_recipe") for k in vars(quantizer))
    assert state.settings["stem.0.input"].method == "entropy"
    assert state.is_fixed(state.quantizers["head.input"])
    assert result.amax["stem.0.input"]["method"] == "entropy"  # the per-quantizer override wins
    assert result.amax["head.input"]["method"] == "fixed"
    assert float(backend.get_amax(state.quantizers["head.input"])) == 3.0


def test_unknown_backend_in_a_recipe_is_a_located_error(write) -> None:
    path = write("r.yaml", """
        recipe: r
        version: 1.0.0
        backend: modelop
    """)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "r.yaml:3:1: backend: unknown backend 'modelop'; did you mean 'modelopt'?" in text


def test_a_registered_amax_method_gets_the_backends_statistics() -> None:
    @methods.register("half-max", needs_histogram=False)
    def half_max(stats, num_bits, unsigned, settings):
        return methods.amax_from_statistics(stats, "max") / 2

    try:
        model = build_dense()
        batches = dense_batches()
        state = apply(model, RECIPE, batches)
        calibrate(model, RECIPE, batches)
        quantizer = state.quantizers["stem.0.input"]
        stats = backend.calibration_statistics(quantizer)
        assert float(methods.amax_from_statistics(stats, "half-max")) == pytest.approx(float(stats["edges"][-1]) / 2)
        with pytest.raises(ValueError, match="unknown calibration method 'nope'"):
            methods.amax_from_statistics(stats, "nope")
        weight_stats = backend.calibration_statistics(state.quantizers["stem.0.weight"])
        with pytest.raises(ValueError, match="needs a histogram"):
            methods.amax_from_statistics(weight_stats, "entropy")
    finally:
        methods.unregister("half-max")


def test_export_mode_is_scoped() -> None:
    from pytorch_quantization.nn import TensorQuantizer

    backends.get()
    assert TensorQuantizer.use_fb_fake_quant is False
    with pytest.raises(RuntimeError), backend.export_mode():
        assert TensorQuantizer.use_fb_fake_quant is True
        raise RuntimeError
    assert TensorQuantizer.use_fb_fake_quant is False
