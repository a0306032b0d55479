"""Committed checkpoints load strictly and reproduce their recorded FP32 validation metric."""

from __future__ import annotations

import pytest
import torch

from recipe_engine.zoo import bevfusion, centerpoint, digits, pointpillars
from recipe_engine.zoo.checkpoint import checkpoint_path, load_checkpoint

#: Allowed |reproduced - recorded| in metric points (0-100 scale).
TOLERANCE = 1e-3
MODULES = {"centerpoint": centerpoint, "bevfusion": bevfusion, "digits": digits, "pointpillars": pointpillars}
TARGETS = {"centerpoint": 40.0, "bevfusion": 40.0, "digits": 95.0, "pointpillars": 45.0}


@pytest.mark.parametrize("name", list(MODULES))
def test_checkpoint_reproduces_metric(name: str) -> None:
    path = checkpoint_path(name)
    assert path.exists(), f"missing {path}"
    assert path.stat().st_size < 8 * 2**20
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert set(blob) == {"state_dict", "meta"}
    state, meta = load_checkpoint(name)
    mod = MODULES[name]
    assert meta["model"] == name and meta["metric_name"] == mod.METRIC
    assert meta["command"].startswith("python -m recipe_engine.zoo.train " + name)
    fresh = mod.build()
    assert set(fresh.state_dict()) == set(state)
    model = mod.build(pretrained=True)  # strict=True load
    assert not model.training
    metric = mod.evaluate(model, mod.val_data())[mod.METRIC]
    assert abs(metric - meta["metric"]) <= TOLERANCE, (metric, meta["metric"])
    assert metric >= TARGETS[name]
