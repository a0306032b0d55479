"""The tracer names op sites exactly as the engine's discovery does, and follows in-place adds."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch import nn

from recipe_engine.draft import draft_recipe, start_from_options
from recipe_engine.draft.trace import trace_model
from recipe_engine.quant.ops import discover_sites, install_op_hooks


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x  # in place: the engine's add0
        return self.relu(out + 0.5)  # a scalar add: not an op site


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a, self.b = Block(8), Block(8)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        joined = torch.cat([self.a(x), self.b(x)], dim=1)  # cat0 of the root
        return self.head(joined + joined)  # add0 of the root, both operands one tensor


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def _batches() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(2, 1, 8, 8) for _ in range(2)]


def test_sites_match_the_engines_discovery() -> None:
    model = _net()
    trace = trace_model(model, _batches()[0], lambda m, b: m(b))
    traced = sorted(s.quantizer for s in trace.sites)
    owners = {"": model, "a": model.a, "b": model.b}
    for module in owners.values():
        install_op_hooks(module, {"add", "cat"})
    found = discover_sites(model, owners, lambda: model(_batches()[0]))
    engine = sorted(f"{o}.{s}" if o else s for o, sites in found.items() for s in sites)
    assert traced == engine == ["a.add0", "add0", "b.add0", "cat0"]
    root_add = next(s for s in trace.sites if s.quantizer == "add0")
    assert len(set(root_add.operands)) == 1  # joined + joined: one tensor twice
    cat = next(s for s in trace.sites if s.quantizer == "cat0")
    assert trace.producer[root_add.operands[0]] == "cat0"  # the concat's result feeds the add
    assert trace.producer[cat.operands[0]] == "a.relu"
    in_place = next(s for s in trace.sites if s.quantizer == "a.add0")
    assert trace.producer[in_place.operands[0]] == "a.bn2" and trace.producer[in_place.result] == "a.add0"


def test_draft_of_a_small_residual_net_passes_plan(tmp_path: Path, monkeypatch) -> None:
    module = types.ModuleType("tiny_residual_net")
    module.build, module.batches = _net, _batches
    Net.__module__ = Block.__module__ = "tiny_residual_net"
    module.Net, module.Block = Net, Block
    monkeypatch.setitem(sys.modules, "tiny_residual_net", module)
    start = start_from_options("tiny_residual_net:build", "tiny_residual_net:batches")
    result = draft_recipe(start, tmp_path / "d.yaml")
    assert len(result.plan.fusions) == result.expected_fusions == 5  # stem chain + 2 x conv1/bn1, conv2/bn2
    groups = [set(g) for g in result.plan.shares]
    assert {"a.conv1.input", "b.conv1.input"} in groups  # the stem's output, read by two convs
    assert {"cat0", "add0"} not in groups  # an add is not a concat: its output has another range
    text = (tmp_path / "d.yaml").read_text()
    assert "- select: {type: 'tiny_residual_net:Block'}\n    ops: {add: act}" in text
    assert "- head" in text  # the layer whose output is the model's output: a disable suggestion
