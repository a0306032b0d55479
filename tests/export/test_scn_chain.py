"""Precision chains of the zoo detectors' libspconv files against NVIDIA's exporters, and the chain error.

NVIDIA's rule, read from their export scripts (not from this exporter): every layer is written
``precision="int8"``, ``output_precision="int8"``, then a short list is overridden.
- CUDA-CenterPoint ``qat/onnx_export/export-scn.py`` (``__main__``, ``--use-quantization``):
  ``conv_input`` fp16 / fp16; the first residual block's ``conv1`` and ``conv2`` fp16 / fp16 and its
  ``quant_add`` fp16 / int8; ``extra_conv`` int8 / fp16 (it feeds ScatterDense).
- CUDA-BEVFusion ``qat/export-scn.py`` (``__main__``): ``conv_input`` fp16 / int8; ``conv_out`` int8 /
  fp16 (the zoo encoder's last conv is ``extra_conv``).
:func:`nvidia_chain` builds that list from the module tree of the zoo encoder; the exported file
must equal it node for node.
"""

from __future__ import annotations

import json

import onnx
import pytest

from recipe_engine import data as data_mod
from recipe_engine.export.capture import capture
from recipe_engine.export.quantizers import quantizers_off
from recipe_engine.export.runner import export
from recipe_engine.export.scn_checks import check_scn, int8_fed_by_fp16
from recipe_engine.export.scn_precision import check_trace
from recipe_engine.export.sparse_trace import trace_sparse
from recipe_engine.fuse import apply_fusions
from recipe_engine.pipeline import apply, plan_recipe, prepare
from recipe_engine.quant import sparse
from recipe_engine.quant.apply import disable_matching, get_state
from recipe_engine.recipe.errors import RecipeError
from recipe_engine.recipe.loader import load_recipe
from recipe_engine.zoo.checkpoint import checkpoint_path
from recipe_engine.zoo.sparse_encoder import SparseBasicBlock, SparseEncoder
from tests.conftest import RECIPES

FAST = ["data.calibration.kwargs.count=1", "data.calibration.kwargs.batch_size=1", "calibration.batches=1",
        "calibration.method=max"]



def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def layer_order(encoder: SparseEncoder, path: str) -> list[str]:
    """The encoder's convs and adds in execution order, from its module tree (SparseBasicBlock: conv1, conv2, add)."""
    names = []
    for stage in ("conv_input", "conv1", "conv2", "conv3", "conv4", "extra_conv"):
        for index, child in enumerate(getattr(encoder, stage)):
            prefix = f"{path}.{stage}.{index}"
            if isinstance(child, SparseBasicBlock):
                names += [f"{prefix}.conv1", f"{prefix}.conv2", f"{prefix}.add0"]
            elif sparse.is_sparse_conv(child):
                names.append(prefix)
    return names


def nvidia_chain(encoder: SparseEncoder, path: str, application: str) -> list[tuple[str, str, str]]:
    """(layer, precision, output_precision) as NVIDIA's export-scn.py of ``application`` sets them."""
    chain = {name: ["int8", "int8"] for name in layer_order(encoder, path)}
    if application == "CUDA-CenterPoint":
        chain[f"{path}.conv_input.0"] = ["fp16", "fp16"]
        chain[f"{path}.conv1.0.conv1"] = ["fp16", "fp16"]
        chain[f"{path}.conv1.0.conv2"] = ["fp16", "fp16"]
        chain[f"{path}.conv1.0.add0"] = ["fp16", "int8"]
        chain[f"{path}.extra_conv.0"][1] = "fp16"
    else:  # CUDA-BEVFusion
        chain[f"{path}.conv_input.0"][0] = "fp16"
        chain[f"{path}.extra_conv.0"][1] = "fp16"
    return [(name, *chain[name]) for name in chain]


def file_chain(proto: onnx.ModelProto) -> list[tuple[str, str, str]]:
    return [(n.name, text(attrs(n)["precision"]), text(attrs(n)["output_precision"])) for n in proto.graph.node
            if n.op_type in ("SparseConvolution", "Add")]


def _shipped_sparse_export(name: str) -> str:
    """The recipe's own onnx-sparse entry as an --set override (the dense exports are not what this is about)."""
    entry = next(e for e in load_recipe(RECIPES / f"{name}.yaml").spec.export if e.format == "onnx-sparse")
    return "export=[" + json.dumps(entry.model_dump(exclude_defaults=True) | {"format": "onnx-sparse"}) + "]"


@pytest.mark.parametrize("name, module, application", [("centerpoint_int8", "encoder", "CUDA-CenterPoint"),
                                                       ("bevfusion_int8", "lidar", "CUDA-BEVFusion")])
def test_shipped_recipes_write_nvidias_chain_node_for_node(name, module, application, tmp_path) -> None:
    if not checkpoint_path(name.split("_")[0]).is_file():
        pytest.skip(f"zoo checkpoint of {name} is not available")
    loaded = load_recipe(RECIPES / f"{name}.yaml", overrides=[*FAST, _shipped_sparse_export(name)])
    model = data_mod.build_model(loaded)
    batches, forward = data_mod.make_data(loaded, "calibration"), data_mod.forward_fn(loaded)
    prepare(model, loaded, batches, forward)
    (result,) = export(model, loaded, tmp_path, batches, forward)
    proto = onnx.load(tmp_path / result["path"])
    expected = nvidia_chain(model.get_submodule(module), module, application)
    assert file_chain(proto) == expected
    assert int8_fed_by_fp16(proto) == []
    int8 = sum(p == "int8" for _, p, _ in expected)
    assert (result["int8_convs"] + result["int8_adds"], len(expected) - int8) == \
        ({"CUDA-CenterPoint": (25, 4), "CUDA-BEVFusion": (28, 1)}[application])
    # every layer carries its dynamic ranges, the fp16 ones included (calibrated, then disabled)
    for node in proto.graph.node:
        values = attrs(node)
        if node.op_type == "SparseConvolution":
            assert values["input_dynamic_range"] > 0 and len(values["weight_dynamic_ranges"]) == values["out_channels"]
        elif node.op_type == "Add":
            assert values["input0_dynamic_range"] == values["input1_dynamic_range"] > 0  # one quantizer, as QuantAdd
    assert result["rel_error"] <= 0.05


def test_untied_block_quantizers_are_found_before_calibration() -> None:
    """The chain rule needs only enabled flags and shared quantizers: a trace before calibration finds the breaks."""
    if not checkpoint_path("centerpoint").is_file():
        pytest.skip("zoo checkpoint of centerpoint is not available")
    untied = load_recipe(RECIPES / "centerpoint_int8.yaml",
                         overrides=[*FAST, "share=[[bev.neck.cat0, bev.head.shared_conv.0.input]]"])
    for loaded, breaks in ((untied, 14), (load_recipe(RECIPES / "centerpoint_int8.yaml", overrides=FAST), 0)):
        model = data_mod.build_model(loaded)
        batches, forward = data_mod.make_data(loaded, "calibration"), data_mod.forward_fn(loaded)
        apply(model, loaded, batches, forward)  # quantizers inserted, nothing calibrated
        apply_fusions(model, loaded.spec, phase="before_export")  # conv_input's BN, folded for export only
        state = get_state(model)
        disable_matching(state, loaded.spec.disable)
        with quantizers_off(state):
            captured = capture(model, batches, forward, ["encoder"], ["encoder"], count_batches=1)
            call = captured.inputs["encoder"]
            trace = trace_sparse(model.encoder, "encoder", call.args, call.kwargs)
        names_of = {id(q): names for names, q in state.unique()}
        if not breaks:
            assert check_trace(trace, names_of).breaks == []
            continue
        with pytest.raises(RecipeError) as info:
            check_trace(trace, names_of)
        message = str(info.value)
        assert f"{breaks} int8 layer(s) would read fp16 tensors" in message
        assert "encoder.conv1.1.conv1 reads encoder.conv1.0.add0's output" in message
        assert ('share: [{for_each: {type: "recipe_engine.zoo.sparse_encoder:SparseBasicBlock"}, '
                'quantizers: ["{module}.conv1.input", "{module}.add0"]}]') in message
        assert len(check_trace(trace, names_of, allow_fp16_to_int8=True).breaks) == 21  # 7 conv1 + 7 adds x 2 inputs


def test_a_broken_chain_is_a_located_error(write, tmp_path) -> None:
    path = write("chain.yaml", """
        recipe: chain
        version: 1.0.0
        model: {factory: "tests.export.models:build_sparse"}
        data:
          calibration: {factory: "tests.export.models:voxel_batches"}
          forward: "tests.export.models:forward_batch"
        quantizers: {act: {calibrator: max}, w: {per_channel: true}}
        fuse:
          - pattern: [SubMConv3d|SparseConv3d, BatchNorm1d, ReLU]
          - block: "tests.export.models:SparseBlock"
        rules:
          - select: {type: [SubMConv3d, SparseConv3d, SparseInverseConv3d]}
            quantize: {input: act, weight: w}
          - select: {type: "tests.export.models:SparseBlock"}
            ops: {add: act}
          - select: encoder
            ops: {add: act}
        share:
          - [encoder.block.conv1.input, encoder.block.add0]
        disable: [encoder.conv_input]
        export:
          - {format: onnx-sparse, module: encoder, path: scn.onnx}
        """)
    loaded = load_recipe(path)
    # recipe plan finds the break before any calibration
    with pytest.raises(RecipeError) as planned:
        plan_recipe(loaded)
    assert str(planned.value).startswith(f"{path}:22:5: export[0]: scn.onnx: onnx-sparse: 2 int8 layer(s) would "
                                         "read fp16 tensors (encoder.down.0, encoder.add0)")
    model = data_mod.build_model(loaded)
    batches, forward = data_mod.make_data(loaded, "calibration"), data_mod.forward_fn(loaded)
    prepare(model, loaded, batches, forward)
    with pytest.raises(RecipeError) as info:
        export(model, loaded, tmp_path, batches, forward)
    message = str(info.value)
    assert message.startswith(f"{path}:22:5: export[0]: scn.onnx: onnx-sparse: 2 int8 layer(s) would read fp16 "
                              "tensors (encoder.down.0, encoder.add0)")
    assert "hint: tie the quantizers that read one tensor: share: [[encoder.down.0.input, encoder.add0]]" in message
    assert not (tmp_path / "scn.onnx").exists()
    # the opt-in writes the file; check_scn accepts it only when told so
    allowed = load_recipe(path, overrides=["export.0.allow_fp16_to_int8=true"])
    (result,) = export(model, allowed, tmp_path, batches, forward)
    proto = onnx.load(tmp_path / "scn.onnx")
    assert int8_fed_by_fp16(proto) == ["encoder.down.0", "encoder.add0"]
    assert [n.split(":")[0] for n in result["notes"] if "allow_fp16_to_int8" in n] == ["encoder.down.0",
                                                                                         "encoder.add0"]
    check_scn(proto, allow_fp16_to_int8=True)
    with pytest.raises(RecipeError, match=r"2 int8 layer\(s\) read fp16 tensors .*encoder\.down\.0, encoder\.add0"):
        check_scn(proto)
