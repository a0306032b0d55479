"""A quantizable module kind and a fusion kind registered from this test module, through the public API only."""

from __future__ import annotations

import pytest
import torch
from pydantic import Field
from torch import nn

from recipe_engine import fuse
from recipe_engine.fuse.settings import FusionOptions
from recipe_engine.pipeline import apply, calibrate
from recipe_engine.quant import backend, kinds
from recipe_engine.quant.slots import QuantizerSlots
from recipe_engine.recipe import RecipeError, load_recipe
from recipe_engine.recipe.schema_file import schema_dict


class Scale(nn.Module):
    """y = x * weight per channel: a layer no backend has a quantized class for."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-2.0, 3.0, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class QuantScale(QuantizerSlots, Scale):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        weight = self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)
        return x * weight.view(1, -1, 1, 1)


def swap_scale(module: nn.Module, input_q, weight_q, backend_name: str) -> None:
    module.__class__ = QuantScale
    module.set_quantizer("input", input_q)
    module.set_quantizer("weight", weight_q)


class FoldScaleOptions(FusionOptions):
    keep: bool = Field(False, title="Keep the Scale module (fold nothing)")


def fold_scale(model: nn.Module, scope, options: FoldScaleOptions) -> list:
    """Fold a Scale that follows a Conv2d in an nn.Sequential into the conv's weight and bias."""
    done = []
    for name, parent in model.named_modules():
        children = list(parent.named_children()) if isinstance(parent, nn.Sequential) else []
        for (conv_key, conv), (scale_key, scale) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and type(scale) is Scale and not options.keep:
                with torch.no_grad():
                    conv.weight.mul_(scale.weight.view(-1, 1, 1, 1))
                    conv.bias.mul_(scale.weight)
                parent._modules[scale_key] = nn.Identity()
                prefix = f"{name}." if name else ""
                done.append(fuse.Fusion(0, "fold_scale", [prefix + conv_key, prefix + scale_key]))
    return done


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Scale(4), nn.ReLU(), Scale(4)).eval()


def _batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, 6, 6, generator=generator) for _ in range(3)]


RECIPE = {
    "recipe": "kinds", "version": "1.0.0",
    "quantizers": {"act": {}, "w": {"per_channel": True}},
    "fuse": [{"use": "fold_scale", "with": {"keep": False}}],
    "rules": [{"select": {"type": "tests.extending.test_module_and_fusion_kinds:Scale"},
               "quantize": {"input": "act", "weight": "w"}}],
}


@pytest.fixture
def registered():
    kinds.register("scale", matches=lambda module, backend_name: type(module) is Scale, swap=swap_scale)
    fuse.register("fold_scale", fold_scale, options=FoldScaleOptions)
    try:
        yield
    finally:
        kinds.unregister("scale")
        fuse.unregister("fold_scale")


def test_a_registered_module_kind_and_fusion_kind_quantize_and_fold(registered) -> None:
    model, batches = _model(), _batches()
    with torch.no_grad():
        reference = [model(b) for b in batches]
    state = apply(model, RECIPE, batches)
    assert [f.modules for f in state.fused] == [["0", "1"]]
    assert isinstance(model[1], nn.Identity) and isinstance(model[3], QuantScale)
    assert sorted(state.quantizers) == ["3.input", "3.weight"]
    calibrate(model, RECIPE, batches)
    weight_amax = backend.get_amax(state.quantizers["3.weight"]).flatten()
    assert torch.allclose(weight_amax, model[3].weight.detach().abs())  # per channel (axis 0)
    with torch.no_grad():
        into_scale = torch.cat([torch.relu(model[0](b)).flatten() for b in batches])
    assert float(backend.get_amax(state.quantizers["3.input"])) == pytest.approx(float(into_scale.abs().max()))
    with torch.no_grad():
        outputs = [model(b) for b in batches]
    errors = [float((o - r).abs().max()) for o, r in zip(outputs, reference, strict=True)]
    assert 0 < max(errors) < 0.1  # quantized (not bit-identical), and the fold kept the function


def test_unknown_options_and_kinds_are_located(registered, tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("recipe: r\nversion: 1.0.0\nfuse:\n  - {use: fold_scale, with: {kep: true}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert (f"{path}:4:23: fuse[0].with: unknown option 'kep' of fusion kind 'fold_scale'; did you mean 'keep'? "
            "(its options: keep)") in str(info.value)
    description = schema_dict()["$defs"]["FuseEntry"]["properties"]["with"]["description"]
    assert description.endswith("pattern: fuse_relu, allow_training; block: fuse_relu, allow_training; fold_scale: keep")
    fuse.unregister("fold_scale")
    with pytest.raises(RecipeError, match=r"fuse\[0\]\.use: no fusion pattern named 'fold_scale' \(registered "
                                          r"fusion kinds: pattern, block\)"):
        apply(_model(), RECIPE, _batches())
    fuse.register("fold_scale", fold_scale, options=FoldScaleOptions)


def test_without_the_module_kind_the_layer_is_not_quantizable(registered) -> None:
    kinds.unregister("scale")
    with pytest.raises(RecipeError, match=r"rules\[0\] selects 3 \(Scale\), which has no quantized version"):
        apply(_model(), RECIPE, _batches())
    assert kinds.registered() == ["dense", "sparse"]
