"""Per-quantizer SQNR is measured on the values each quantizer saw, also for in-place op sites."""

from __future__ import annotations

import torch
from torch import nn

from recipe_engine.analyze.fidelity import measure_fidelity, sqnr_db
from recipe_engine.pipeline import prepare


class InplaceBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        out += x  # in place: the left operand's storage is overwritten by the sum
        return out


RECIPE = {
    "recipe": "inplace-test", "version": "1.0.0",
    "quantizers": {"act": {"num_bits": 8, "calibrator": "max"}},
}


def _forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch)


def test_inplace_add_site_sqnr_is_the_quantizer_error_not_the_overwritten_view() -> None:
    torch.manual_seed(0)
    model = InplaceBlock().eval()
    batches = [torch.randn(2, 4, 8, 8) for _ in range(2)]
    recipe = dict(RECIPE, rules=[{"select": {"type": "tests.analyze.test_fidelity:InplaceBlock"},
                                  "ops": {"add": "act"}}])
    prepare(model, recipe, batches, forward=_forward)
    (site,) = [f for f in measure_fidelity(model, batches[0], _forward) if f.kind == "op"]
    # the expected figure: 8-bit max-calibrated fake quant of the conv output and of x
    with torch.no_grad():
        left = model.conv(batches[0])
    amax = site.amax
    scale = amax / 127.0
    fake = torch.clamp(torch.round(left / scale), -127, 127) * scale
    expected = sqnr_db(left, fake)
    assert expected > 30.0
    assert abs(site.sqnr_db - expected) < 3.0, (site.sqnr_db, expected)
