"""spconv layers on the modelopt backend: the engine's sparse wrapper calls modelopt quantizers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("modelopt.torch.quantization")
pytest.importorskip("spconv.pytorch")

from recipe_engine import backends  # noqa: E402
from recipe_engine.export.runner import export  # noqa: E402
from recipe_engine.pipeline import prepare  # noqa: E402
from recipe_engine.quant import backend  # noqa: E402
from recipe_engine.quant.apply import get_state  # noqa: E402
from recipe_engine.recipe import RecipeError  # noqa: E402
from tests.export.models import build_sparse, forward_batch, sparse_recipe, voxel_batches  # noqa: E402

EXPORT = [{"format": "onnx-sparse", "module": "encoder", "path": "scn.onnx", "layout": "zyx"}]


def _prepared(name: str, **changes):
    recipe = sparse_recipe(backend=name, export=EXPORT, **changes)
    model, batches = build_sparse("zyx"), voxel_batches("zyx")
    prepare(model, recipe, batches, forward_batch)
    return recipe, model, batches


def test_sparse_int8_same_amax_on_both_backends_and_libspconv_export(tmp_path) -> None:
    _, pq_model, _ = _prepared("pytorch-quantization")
    recipe, mo_model, batches = _prepared("modelopt")
    pq, mo = get_state(pq_model), get_state(mo_model)
    assert list(pq.quantizers) == list(mo.quantizers) and pq.disabled == mo.disabled
    sparse_names = [n for n in mo.quantizers if n.startswith("encoder.") and n.endswith((".input", ".weight"))]
    assert sparse_names and {backends.backend_of(mo.quantizers[n]).name for n in sparse_names} == {"modelopt"}
    for name in pq.quantizers:
        assert torch.equal(backend.get_amax(pq.quantizers[name]).flatten(),
                           backend.get_amax(mo.quantizers[name]).flatten()), name
    (result,) = export(mo_model, recipe, tmp_path, batches, forward_batch)
    assert result["status"] == "ok", result


def test_libspconv_export_refuses_fp8_sparse_layers(tmp_path) -> None:
    fp8 = {"act": {"format": "fp8_e4m3", "calibrator": "max"}, "w": {"format": "fp8_e4m3"}}
    recipe, model, batches = _prepared("modelopt", quantizers=fp8)
    with pytest.raises(RecipeError, match=r"export\[0\]: scn.onnx: onnx-sparse: quantizer encoder\..* is fp8_e4m3; "
                                          r"libspconv runs int8 or fp16"):
        export(model, recipe, tmp_path, batches, forward_batch)
