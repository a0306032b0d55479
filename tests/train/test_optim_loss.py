"""Optimizer / schedule construction from recipes, located errors, and loss reduction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe_engine.recipe import RecipeError, load_recipe
from recipe_engine.recipe.schema import OptimizerSpec, ScheduleSpec
from recipe_engine.train.loss import compute_loss, total_loss
from recipe_engine.train.optim import build_optimizer, build_scheduler, param_groups

RECIPE = """
recipe: qat-optim
version: 1.0.0
qat:
  steps: 10
  optimizer:
    name: {name}
    kwargs: {kwargs}
"""


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False))


def test_optimizer_by_name_with_groups(write) -> None:
    loaded = load_recipe(write("r.yaml", RECIPE.format(name="AdamW", kwargs="{lr: 0.01, weight_decay: 0.05}")))
    optimizer = build_optimizer(small(), loaded.spec.qat.optimizer, loaded)
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"decay", "no_decay"}
    assert [p.shape for p in groups["decay"]["params"]] == [(4, 3, 3, 3), (2, 4, 1, 1)]
    assert len(groups["no_decay"]["params"]) == 3 and groups["no_decay"]["weight_decay"] == 0.0  # bias, BN w, BN b
    assert groups["decay"]["weight_decay"] == 0.05 and groups["decay"]["lr"] == 0.01
    plain = param_groups(small(), OptimizerSpec(no_decay_on_norm_and_bias=False))
    assert [g["name"] for g in plain] == ["decay"] and len(plain[0]["params"]) == 5


@pytest.mark.parametrize("name,kwargs,key,fragment", [
    ("Adamw", "{lr: 0.1}", "name", "did you mean 'AdamW'"),
    ("FancyOpt", "{lr: 0.1}", "name", "not a torch.optim class"),
    ("SGD", "{lr: 0.1, momentun: 0.9}", "momentun", "did you mean 'momentum'"),
    ("SGD", "{lr: -1.0}", "lr", "Invalid learning rate"),
])
def test_bad_optimizer_is_a_located_recipe_error(write, name, kwargs, key, fragment) -> None:
    path = write("r.yaml", RECIPE.format(name=name, kwargs=kwargs))
    loaded = load_recipe(path)
    with pytest.raises(RecipeError) as info:
        build_optimizer(small(), loaded.spec.qat.optimizer, loaded)
    text = info.value.format()
    line = 6 if key == "name" else 7
    assert text.startswith(f"{path}:{line}:"), text
    assert fragment in text


def lrs(spec: ScheduleSpec, steps: int = 10, lr: float = 1.0) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    scheduler = build_scheduler(optimizer, spec, steps)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_schedules() -> None:
    assert lrs(ScheduleSpec()) == [1.0] * 10
    assert lrs(ScheduleSpec(name="multistep", milestones=[3, 6], gamma=0.5)) == pytest.approx(
        [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
    cosine = lrs(ScheduleSpec(name="cosine", warmup_steps=3))
    assert cosine[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and cosine[4] > cosine[5] > cosine[9] > 0
    cycle = lrs(ScheduleSpec(name="one_cycle", max_lr=2.0, pct_start=0.3, div_factor=10))
    assert cycle[0] == pytest.approx(0.2) and max(cycle) == pytest.approx(2.0) and cycle[-1] < 0.01
    assert cycle.index(max(cycle)) == 2


def test_schedule_errors_point_at_the_recipe(write) -> None:
    path = write("r.yaml", "recipe: s\nversion: 1.0.0\nqat:\n  steps: 4\n  schedule:\n    name: cosine\n"
                           "    warmup_steps: 9\n")
    loaded = load_recipe(path)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(RecipeError, match=rf"^{path}:7:.*warmup_steps"):
        build_scheduler(optimizer, loaded.spec.qat.schedule, 4, loaded)


def test_one_cycle_keeps_group_ratios() -> None:
    weight, amax = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([{"params": [weight]}, {"params": [amax], "lr": 0.1}], lr=1.0)
    scheduler = build_scheduler(optimizer, ScheduleSpec(name="one_cycle"), 10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * optimizer.param_groups[0]["lr"])


# ----------------------------------------------------------------------------- losses
def test_scalar_and_dict_losses() -> None:
    loss, parts = total_loss(torch.tensor(2.0))
    assert float(loss) == 2.0 and parts == {}
    value = {"cls": torch.tensor(1.0), "reg": [torch.tensor(0.5), torch.tensor(0.25)], "aux": torch.tensor(7.0)}
    loss, parts = total_loss(value, {"reg": 2.0, "aux": 0.0})
    assert float(loss) == pytest.approx(1.0 + 1.5)
    assert parts == {"cls": 1.0, "reg": 1.5}


def test_loss_source_or_model_output() -> None:
    batch = {"y": torch.ones(3)}
    output = torch.zeros(3, requires_grad=True)
    loss, _ = compute_loss(output, batch, lambda out, b: (out - b["y"]).square().mean())
    loss.backward()
    assert float(loss.detach()) == 1.0 and output.grad is not None
    with pytest.raises(RecipeError, match="not a scalar"):
        compute_loss(output, batch, None)  # a prediction is not a loss without data.loss


def test_bad_loss_values(write) -> None:
    with pytest.raises(RecipeError, match="'cls' is not a scalar tensor"):
        total_loss({"cls": torch.ones(4)})
    with pytest.raises(RecipeError, match="expected a scalar tensor or a dict"):
        total_loss([torch.tensor(1.0)])
    path = write("r.yaml", "recipe: s\nversion: 1.0.0\nqat:\n  steps: 4\n  loss_weights:\n    rg: 2.0\n")
    loaded = load_recipe(path)
    with pytest.raises(RecipeError, match=rf"^{path}:6:.*'rg'.*not among the losses \['cls', 'reg'\]"):
        total_loss({"cls": torch.tensor(1.0), "reg": torch.tensor(1.0)}, loaded.spec.qat.loss_weights, loaded)


def test_shipped_qat_recipe_builds_its_optimizer_and_schedule() -> None:
    from pathlib import Path

    from recipe_engine.zoo import centerpoint

    loaded = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "centerpoint_qat.yaml")
    qat = loaded.spec.qat
    assert loaded.spec.data.train and loaded.spec.data.loss and qat.keep_best == "mAP"
    optimizer = build_optimizer(centerpoint.build(), qat.optimizer, loaded)
    scheduler = build_scheduler(optimizer, qat.schedule, qat.steps, loaded)
    assert type(optimizer).__name__ == "AdamW" and type(scheduler).__name__ == "OneCycleLR"
