"""An export format and an amax method registered from this test module, through the public API only:
accepted in a recipe, listed in the generated JSON schema, run by the engine, and gone once unregistered."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import Field

from recipe_engine.calib import methods
from recipe_engine.calib.settings import MethodSettings
from recipe_engine.export import formats
from recipe_engine.export.runner import export
from recipe_engine.export.settings import ExportBase
from recipe_engine.pipeline import apply, calibrate
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from recipe_engine.recipe import RecipeError, load_recipe, load_recipe_data
from recipe_engine.recipe.schema_file import schema_dict
from recipe_engine.util.atomic import atomic_write_bytes
from tests.helpers import build_dense, dense_batches


class AmaxTableExport(ExportBase):
    """Every enabled quantizer's amax as a numpy archive (a stand-in for a runtime's calibration table)."""

    format: Literal["amax-table"] = Field(title="Format")
    scale: float = Field(1.0, gt=0, title="Multiply every amax by this")


def run_amax_table(ctx: formats.ExportContext, entry: AmaxTableExport) -> dict:
    arrays = {name: backend.get_amax(q).detach().cpu().numpy() * entry.scale
              for name, q in ctx.state.quantizers.items() if backend.is_enabled(q)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(ctx.out / entry.path, buffer.getvalue())
    return {**ctx.base(entry), "arrays": len(arrays)}


class TrimSettings(MethodSettings):
    trim: float = Field(0.5, gt=0, le=1, title="Fraction of the absolute maximum")


def trimmed_max(stats, num_bits, unsigned, settings):
    return methods.amax_from_statistics(stats, "max") * settings.trim


@pytest.fixture
def registered():
    formats.register("amax-table", AmaxTableExport, run_amax_table, capture=None)
    methods.register("trimmed-max", trimmed_max, needs_histogram=False, settings=TrimSettings)
    try:
        yield
    finally:
        formats.unregister("amax-table")
        methods.unregister("trimmed-max")


def _recipe(method: str, **calibration) -> dict:
    return {
        "recipe": "ext", "version": "1.0.0",
        "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
        "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}}],
        "calibration": {"method": method, **calibration},
        "export": [{"format": "amax-table", "path": "amax.npz", "scale": 2.0}],
    }


def _calibrated(recipe: dict):
    model, batches = build_dense(), dense_batches()
    apply(model, recipe, batches)
    calibrate(model, recipe, batches)
    return model, batches, get_state(model)


def test_registered_format_and_method_are_in_the_recipe_and_the_schema(registered) -> None:
    spec = load_recipe_data(_recipe("trimmed-max", trim=0.25)).spec
    assert isinstance(spec.export[0], AmaxTableExport) and spec.export[0].scale == 2.0
    assert spec.calibration.method == "trimmed-max" and spec.calibration.trim == 0.25
    schema = schema_dict()
    assert schema["$defs"]["AmaxTableExport"]["properties"]["scale"]["exclusiveMinimum"] == 0
    mapping = schema["properties"]["export"]["items"]["discriminator"]["mapping"]
    assert set(mapping) == {"onnx-qdq", "onnx-sparse", "tensorrt", "amax-table"}
    calibration = schema["$defs"]["CalibrationSection"]["properties"]
    assert calibration["method"]["enum"] == ["max", "entropy", "mse", "percentile", "trimmed-max"]
    assert calibration["trim"]["maximum"] == 1 and calibration["percentile"]["default"] == 99.99


def test_registered_method_and_format_run(registered, tmp_path) -> None:
    reference, _, reference_state = _calibrated(_recipe("max"))
    model, batches, state = _calibrated(_recipe("trimmed-max", trim=0.25))
    assert len(state.quantizers) == 8  # input + weight of stem.0, up.0, lateral, head
    for name, quantizer in state.quantizers.items():  # the method runs on histogram (input) quantizers only
        expected = backend.get_amax(reference_state.quantizers[name]) * (0.25 if name.endswith(".input") else 1)
        assert torch.allclose(backend.get_amax(quantizer), expected), name
    assert float(backend.get_amax(state.quantizers["stem.0.input"])) > 0.5  # a real amax, a quarter of the max
    (result,) = export(model, _recipe("trimmed-max", trim=0.25), tmp_path, batches)
    assert result == {"path": "amax.npz", "format": "amax-table", "module": None, "status": "ok", "arrays": 8,
                      "seconds": result["seconds"]}
    table = np.load(tmp_path / "amax.npz")
    stem = backend.get_amax(state.quantizers["stem.0.weight"]).numpy()
    np.testing.assert_allclose(table["stem.0.weight"], stem * 2.0)
    assert stem.size == model.stem[0].out_channels > 1 and float(stem.min()) > 0  # per channel, calibrated


def test_unknown_names_are_located_errors_listing_the_registered_ones(registered, tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("recipe: r\nversion: 1.0.0\ncalibration: {method: trimmed-mux}\n"
                    "export:\n  - {format: amax-tabel, path: a.npz}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = str(info.value)
    assert (f"{path}:3:15: calibration.method: unknown calibration method 'trimmed-mux'; did you mean 'trimmed-max'? "
            "(registered: max, entropy, mse, percentile, trimmed-max)") in text
    assert (f"{path}:5:5: export[0]: unknown export format 'amax-tabel'; did you mean 'amax-table'? "
            "(registered: onnx-qdq, onnx-sparse, tensorrt, amax-table)") in text


def test_unregistered_kinds_leave_the_schema(registered) -> None:
    formats.unregister("amax-table")
    methods.unregister("trimmed-max")
    try:
        schema = schema_dict()
        assert "AmaxTableExport" not in schema["$defs"]
        assert "trim" not in schema["$defs"]["CalibrationSection"]["properties"]
        with pytest.raises(RecipeError, match="unknown export format 'amax-table'"):
            load_recipe_data(_recipe("max"))
    finally:  # the fixture unregisters again (a no-op): register them back for it
        formats.register("amax-table", AmaxTableExport, run_amax_table, capture=None)
        methods.register("trimmed-max", trimmed_max, needs_histogram=False, settings=TrimSettings)


def test_a_settings_model_must_name_its_format() -> None:
    with pytest.raises(TypeError, match=r"needs the field format: Literal\['other'\]"):
        formats.register("other", AmaxTableExport, run_amax_table)
    assert "other" not in formats.registered()
