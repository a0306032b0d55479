"""The README's Extending example, run as written: its Python block registers a format and a method,
its YAML block is merged into a recipe that is calibrated and exported."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from recipe_engine.calib import methods
from recipe_engine.export import formats
from recipe_engine.export.runner import export
from recipe_engine.pipeline import apply, calibrate
from recipe_engine.quant import backend
from recipe_engine.recipe.schema_file import schema_dict
from tests.conftest import ROOT
from tests.helpers import build_dense, dense_batches


def _blocks() -> tuple[str, dict]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    python = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    recipe_yaml = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert len(python) == 1 and len(recipe_yaml) == 1
    return python[0], yaml.safe_load(recipe_yaml[0])


@pytest.fixture
def example():
    code, recipe_part = _blocks()
    namespace: dict = {"__name__": "readme_example"}
    # as a module of its own: without this file's `from __future__ import annotations`
    exec(compile(code, "README.md#extending", "exec", dont_inherit=True), namespace)  # noqa: S102
    try:
        yield recipe_part
    finally:
        formats.unregister("amax-json")
        methods.unregister("trimmed-max")


def test_the_readme_extension_example_runs(example, tmp_path) -> None:
    recipe = {"recipe": "readme", "version": "1.0.0",
              "quantizers": {"w": {"per_channel": True}},
              "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}}]}
    recipe = {**recipe, **example, "quantizers": {**recipe["quantizers"], **example["quantizers"]}}
    reference_recipe = {**recipe, "calibration": {"method": "max"}, "export": []}
    reference_model, batches = build_dense(), dense_batches()
    reference = apply(reference_model, reference_recipe, batches)
    calibrate(reference_model, reference_recipe, batches)
    model = build_dense()
    state = apply(model, recipe, batches)
    calibrate(model, recipe, batches)
    (result,) = export(model, recipe, tmp_path, batches)
    assert result["status"] == "ok" and result["format"] == "amax-json" and result["quantizers"] == 8
    table = json.loads((tmp_path / "amax.json").read_text())
    for name, quantizer in state.quantizers.items():
        trim = 0.8 if name.endswith(".input") else 1.0  # inputs: histogram calibrators, the method applies
        expected = (backend.get_amax(reference.quantizers[name]).flatten() * trim).tolist()
        assert table[name] == pytest.approx(expected, rel=1e-3), name  # 4 significant digits
        assert table[name] == [float(f"{v:.4g}") for v in backend.get_amax(quantizer).flatten().tolist()]
    schema = schema_dict()
    assert "AmaxJson" in schema["$defs"] and "trim" in schema["$defs"]["CalibrationSection"]["properties"]
