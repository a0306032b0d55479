"""Op-input quantization (add/cat in a module's own forward) and shared quantizers."""

from __future__ import annotations

import pytest
import torch

from recipe_engine.pipeline import apply, calibrate
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from recipe_engine.recipe import RecipeError
from tests.helpers import TinyDenseNet, TinySparseNet, random_sparse_input, randomize_bn

BASE = {"recipe": "t", "version": "1.0.0",
        "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
        "calibration": {"method": "max"}}


def _recipe(**extra):
    return {**BASE, **extra}


def test_add_in_sparse_block_is_quantized_but_not_in_children() -> None:
    torch.manual_seed(0)
    model = TinySparseNet().eval()
    randomize_bn(model)
    batches = [random_sparse_input(seed=s) for s in range(3)]
    # only the block's own add; TinySparseNet.forward itself has no add (so selecting the root finds none there)
    state = apply(model, _recipe(rules=[{"select": {"type": "tests.helpers:ResidualSparseBlock"},
                                         "ops": {"add": "act"}}]), batches)
    assert state.op_sites == {"block": ["add0"]}
    assert list(state.quantizers) == ["block.add0"]
    calibrate(model, _recipe(), batches)
    quantizer = state.quantizers["block.add0"]
    amax = float(backend.get_amax(quantizer))
    # one amax for both inputs: it covers the larger of the two operands' ranges
    seen = []
    block = model.block
    hook = block.conv2.register_forward_hook(lambda m, i, o: seen.append(o.features.abs().max()))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    hook.remove()
    assert amax >= max(float(s) for s in seen) * 0.5  # max calibrator over both inputs of the add
    # the add really is fake-quantized: the output changes when the quantizer is switched off
    with torch.no_grad():
        quantized = model(batches[0]).clone()
        backend.set_enabled(quantizer, False)
        plain = model(batches[0])
    assert not torch.equal(quantized, plain)


def test_selecting_a_parent_does_not_capture_child_ops() -> None:
    model = TinySparseNet().eval()
    batches = [random_sparse_input()]
    with pytest.raises(RecipeError, match="runs no add directly in its forward"):
        apply(model, _recipe(rules=[{"select": "down", "ops": {"add": "act"}}]), batches)


def test_shared_quantizers_are_one_object_with_merged_statistics() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    model = TinyDenseNet().eval()
    root_recipe = _recipe(rules=[{"select": {"type": "Conv2d"}, "quantize": {"input": "act", "weight": "w"}}],
                          share=[["lateral.input", "head.input"]])
    state = apply(model, root_recipe, batches)
    assert state.quantizers["lateral.input"] is state.quantizers["head.input"]
    assert model.lateral._input_quantizer is model.head._input_quantizer
    calibrate(model, root_recipe, batches)
    shared = float(backend.get_amax(state.quantizers["head.input"]))
    # reference: the union of what lateral and head saw
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, i: seen.append(i[0].abs().max())) for m in (model.lateral,
                                                                                                 model.head)]
    for q in state.quantizers.values():
        backend.set_enabled(q, False)
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for h in hooks:
        h.remove()
    assert abs(shared - max(float(s) for s in seen)) < 1e-6 * shared + 1e-3  # histogram 'max' = range end


def test_overlapping_share_groups_tie_every_name_to_the_last_leader() -> None:
    """A quantizer already shared under two names is replaced under both when a later group re-ties one."""
    batches = [torch.randn(2, 3, 8, 8)]
    model = TinyDenseNet().eval()
    recipe = _recipe(rules=[{"select": {"type": "Conv2d"}, "quantize": {"input": "act", "weight": "w"}}],
                     share=[["lateral.input", "head.input"], ["stem.0.input", "head.input"]])
    state = apply(model, recipe, batches)
    leader = state.quantizers["stem.0.input"]
    assert state.quantizers["lateral.input"] is leader and state.quantizers["head.input"] is leader
    assert model.head._input_quantizer is leader and model.lateral._input_quantizer is leader
    assert model.stem[0]._input_quantizer is leader
    assert state.groups == [["lateral.input", "head.input"], ["stem.0.input", "head.input"]]
    assert [sorted(names) for names, _ in state.unique() if len(names) > 1] == [
        ["head.input", "lateral.input", "stem.0.input"]]
    assert state.quantizers["stem.0.weight"] is not state.quantizers["head.weight"]


def test_root_module_cat_is_an_op_site() -> None:
    batches = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    model = TinyDenseNet().eval()

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x)

    recipe = _recipe(rules=[{"select": {"type": "tests.helpers:TinyDenseNet"}, "ops": {"cat": "act"}}])
    wrapped = Wrapper().eval()
    state = apply(wrapped, recipe, batches)
    assert state.op_sites == {"net": ["cat0"]}
    calibrate(wrapped, recipe, batches)
    assert float(backend.get_amax(get_state(wrapped).quantizers["net.cat0"])) > 0


def test_op_sites_on_a_sequential_subclass_keep_its_forward_working() -> None:
    class Fuser(torch.nn.Sequential):
        def forward(self, a, b):
            return super().forward(torch.cat([a, b], 1))

    model = torch.nn.Sequential()
    model.add_module("fuser", Fuser(torch.nn.Conv2d(4, 2, 1)))

    class Root(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fuser = model.fuser

        def forward(self, a, b):
            return self.fuser(a, b)

    root = Root().eval()
    batches = [(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)) for _ in range(2)]
    with torch.no_grad():
        expected = root(*batches[0])
    state = apply(root, _recipe(rules=[{"select": "fuser", "ops": {"cat": "act"}}]), batches)
    assert state.op_sites == {"fuser": ["cat0"]}
    calibrate(root, _recipe(), batches)
    with torch.no_grad():
        quantized = root(*batches[0])
    assert quantized.shape == expected.shape
    assert 0 < (quantized - expected).abs().max() < 0.1


class _Probe(torch.nn.Module):
    """Records how many torch-function modes are active while it runs, and adds (so a leaked mode would see it)."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[int] = []

    def forward(self, x):
        self.modes.append(torch._C._len_torch_function_stack())
        return x + 1.0


class _Owner(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.modes: list[int] = []

    def forward(self, x):
        self.modes.append(torch._C._len_torch_function_stack())
        y = self.inner(x)
        self.modes.append(torch._C._len_torch_function_stack())
        if float(x.sum()) > 1e6:
            raise ValueError("boom")
        return y + x


def test_op_site_mode_is_off_while_children_run_and_nested_owners_keep_their_sites() -> None:
    from recipe_engine.quant.ops import discover_sites, install_op_hooks

    probe = _Probe()
    inner_owner = _Owner(probe)
    model = _Owner(inner_owner)
    for owner in (model, inner_owner):
        install_op_hooks(owner, {"add"})
    x = torch.ones(3)
    found = discover_sites(model, {"": model, "inner": inner_owner}, lambda: model(x))
    assert found == {"": ["add0"], "inner": ["add0"]}  # the probe's add (a child's) is nobody's site
    assert probe.modes == [0]  # no mode while a plain child runs (before: one mode per running owner, 2)
    assert inner_owner.modes == [1, 1] and model.modes == [1, 1]
    assert torch._C._len_torch_function_stack() == 0
    with pytest.raises(ValueError, match="boom"):
        model(torch.full((3,), 1e7))
    assert torch._C._len_torch_function_stack() == 0  # nothing left pushed after an exception
