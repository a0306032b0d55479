"""QAT loop on small real models: loss goes down, amax stays fixed (unless learned), resume is bit-exact."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from recipe_engine import data as data_mod
from recipe_engine.pipeline import as_loaded, prepare, run_recipe
from recipe_engine.quant import backend
from recipe_engine.quant.apply import get_state
from recipe_engine.recipe import RecipeError
from recipe_engine.train import checkpoint as ckpt
from recipe_engine.train.qat import run_qat
from tests.train.common import BASE, amax_buffers, prepared, recipe, weights


def test_short_qat_lowers_loss_changes_weights_keeps_amax(tmp_path) -> None:
    model, loaded = prepared(recipe())
    amax_before, weights_before = amax_buffers(model), weights(model)
    evaluate = data_mod.evaluate_fn(loaded)
    val = data_mod.make_data(loaded, "validation")
    mse_before = evaluate(model, val)["mse"]
    metrics = run_qat(model, loaded, tmp_path, evaluate=evaluate, val_batches=val, show_progress=False)
    assert metrics["qat_loss"]["last"] < 0.8 * metrics["qat_loss"]["first"]
    assert metrics["qat"]["mse"] < mse_before
    assert metrics["qat_steps"] == 12 and metrics["qat_seconds"] > 0
    after = weights(model)
    assert any(not torch.equal(after[k], weights_before[k]) for k in weights_before if "weight" in k)
    assert amax_buffers(model).keys() == amax_before.keys() and amax_before
    for key, value in amax_before.items():
        assert torch.equal(amax_buffers(model)[key], value), key
    assert not model.training  # handed back in eval mode, on the CPU
    log = [json.loads(line) for line in (tmp_path / "qat_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [4, 8, 12]


def test_learn_amax_trains_clip_values_with_their_own_lr(tmp_path) -> None:
    data = recipe(steps=4, optimizer={"name": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
                                      "amax_lr_mult": 0.5})
    data["quantizers"]["act"] = {"calibrator": "histogram", "learn_amax": True}
    model, loaded = prepared(data)
    state = get_state(model)
    inputs = [q for name, q in state.quantizers.items() if name.endswith(".input")]
    before = [float(q.clip.clip_value_max.detach()) for q in inputs]
    assert before == pytest.approx([float(backend.get_amax(q)) for q in inputs])  # initialised from calibration
    from recipe_engine.train.optim import build_optimizer

    groups = {g["name"]: g for g in build_optimizer(model, loaded.spec.qat.optimizer, loaded).param_groups}
    assert groups["amax"]["lr"] == pytest.approx(0.025) and groups["amax"]["weight_decay"] == 0.0
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 1e-4
    assert all(p.ndim == 1 for p in groups["no_decay"]["params"])  # folded conv biases
    run_qat(model, loaded, tmp_path, show_progress=False)
    after = [float(q.clip.clip_value_max.detach()) for q in inputs]
    assert sum(a != b for a, b in zip(after, before, strict=True)) >= 2  # inputs that clip anything learn their range


def test_model_output_dict_is_the_loss(tmp_path) -> None:
    data = recipe(steps=6, loss_weights={"loss_abs": 0.5})
    data["model"] = {"factory": "tests.train.models:build_self_loss"}
    data["data"].pop("loss")
    data["data"].pop("evaluate")
    data["data"]["forward"] = "tests.train.models:self_loss_forward"
    data["fuse"] = [{"pattern": ["Conv2d|ConvTranspose2d", "BatchNorm2d", "ReLU"], "within": "net"}]
    model, loaded = prepared(data)
    metrics = run_qat(model, loaded, tmp_path, show_progress=False)
    assert metrics["qat_loss"]["last"] < metrics["qat_loss"]["first"]
    log = [json.loads(line) for line in (tmp_path / "qat_log.jsonl").read_text().splitlines()]
    assert {"loss/loss_mse", "loss/loss_abs"} <= set(log[0])


def test_eval_every_and_keep_best(tmp_path) -> None:
    model, loaded = prepared(recipe(steps=6, eval_every=2, keep_best="neg_mse"))
    metrics = run_qat(model, loaded, tmp_path, evaluate=data_mod.evaluate_fn(loaded), show_progress=False)
    evals = [json.loads(line) for line in (tmp_path / "qat_log.jsonl").read_text().splitlines()]
    scores = [e["eval"]["neg_mse"] for e in evals if "eval" in e]
    assert len(scores) == 3  # steps 2, 4 and the end
    assert metrics["qat_best"]["value"] == max(scores) and metrics["qat"]["neg_mse"] == max(scores)
    assert (tmp_path / ckpt.BEST_FILE).is_file()


def test_freeze_bn_after(tmp_path) -> None:
    data = recipe(steps=4, freeze_bn_after=2, optimizer={"name": "SGD", "kwargs": {"lr": 1e-3}})
    data["fuse"] = []  # keep the BatchNorm layers
    model, loaded = prepared(data)
    seen: list[torch.Tensor] = []
    run_qat(model, loaded, tmp_path, show_progress=False,
            on_step=lambda step: seen.append(model.stem[1].running_mean.clone()))
    assert not torch.equal(seen[0], seen[1])  # step 2 still updates (frozen from step 2 on)
    assert torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])


def test_sparse_model_trains(tmp_path) -> None:
    data = {
        "recipe": "tiny-sparse-qat", "version": "1.0.0",
        "model": {"factory": "tests.train.models:build_sparse"},
        "data": {"calibration": {"factory": "tests.train.models:sparse_data"},
                 "train": {"factory": "tests.train.models:sparse_data", "kwargs": {"seed": 1}},
                 "forward": "tests.train.models:forward", "loss": "tests.train.models:mse"},
        "quantizers": {"act": {}, "w": {"per_channel": True}},
        "fuse": [{"pattern": ["SubMConv3d|SparseConv3d", "BatchNorm1d", "ReLU"]},
                 {"block": "tests.helpers:ResidualSparseBlock"}],
        "rules": [{"select": {"type": "SparseConv"}, "quantize": {"input": "act", "weight": "w"}},
                  {"select": {"type": "tests.helpers:ResidualSparseBlock"}, "ops": {"add": "act"}}],
        "qat": {"steps": 4, "optimizer": {"name": "AdamW", "kwargs": {"lr": 1e-2}}, "log_every": 1},
    }
    model, loaded = prepared(data)
    amax_before, weights_before = amax_buffers(model), weights(model)
    metrics = run_qat(model, loaded, tmp_path, show_progress=False)
    assert metrics["qat_loss"]["last"] < metrics["qat_loss"]["first"]
    assert not torch.equal(weights(model)["stem.0.weight"], weights_before["stem.0.weight"])
    assert all(torch.equal(amax_buffers(model)[k], v) for k, v in amax_before.items())


# ----------------------------------------------------------------------------- resume
RESUME = dict(steps=7, checkpoint_every=3, log_every=2,
              optimizer={"name": "AdamW", "kwargs": {"lr": 3e-3, "weight_decay": 0.01}},
              schedule={"name": "one_cycle", "pct_start": 0.3}, grad_clip=1.0)


def resume_recipe() -> dict:
    data = recipe(**RESUME)
    # a shuffling DataLoader (order from the global torch RNG) of 4 batches: epochs roll over at 4
    data["data"]["train"] = {"factory": "tests.train.models:shuffled_data", "kwargs": {"count": 4}}
    data["data"]["loss"] = "tests.train.models:noisy_mse"  # draws from torch, numpy and random
    return data


class Killed(Exception):
    pass


def test_kill_and_resume_equals_uninterrupted(tmp_path) -> None:
    model, loaded = prepared(resume_recipe())
    run_qat(model, loaded, tmp_path / "straight", show_progress=False)
    reference = weights(model)

    def kill_after_5(step: int) -> None:
        if step == 5:
            raise Killed

    model, loaded = prepared(resume_recipe())
    with pytest.raises(Killed):
        run_qat(model, loaded, tmp_path / "killed", show_progress=False, on_step=kill_after_5)
    saved = torch.load(tmp_path / "killed" / ckpt.CHECKPOINT_FILE, weights_only=True)
    assert saved["position"] == {"step": 3, "epoch": 0, "index": 3}
    assert saved["sha256"] == loaded.sha256

    model, loaded = prepared(resume_recipe())  # a new process would rebuild and recalibrate like this
    metrics = run_qat(model, loaded, tmp_path / "killed", show_progress=False)
    assert metrics["qat_resumed_from_step"] == 3
    resumed = weights(model)
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(resumed[key], value), key
    straight = (tmp_path / "straight" / "qat_log.jsonl").read_text()
    assert (tmp_path / "killed" / "qat_log.jsonl").read_text() == straight  # same losses, step by step


def test_recipe_run_writes_qat_metrics_and_a_weights_only_checkpoint(tmp_path) -> None:
    loaded = as_loaded(recipe(steps=3))
    metrics = run_recipe(loaded, tmp_path, show_progress=False)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["qat"] == metrics["qat"] and written["qat_seconds"] > 0 and written["int8"]
    saved = torch.load(tmp_path / ckpt.CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert saved["sha256"] == loaded.sha256 and saved["position"]["step"] == 3
    assert {"model", "optimizer", "scheduler", "rng", "epoch_rng"} <= set(saved)


def test_resume_is_automatic_for_the_same_recipe_and_checked_on_request(tmp_path) -> None:
    model, loaded = prepared(recipe(steps=3))
    first = run_qat(model, loaded, tmp_path, show_progress=False)
    model, loaded = prepared(recipe(steps=3))
    again = run_qat(model, loaded, tmp_path, show_progress=False)  # same sha256: resumes (at the end)
    assert again["qat_resumed_from_step"] == 3 and again["qat_loss"] == first["qat_loss"]
    model, other = prepared(recipe(steps=4))
    with pytest.raises(RecipeError, match="belongs to another recipe"):
        run_qat(model, other, tmp_path, show_progress=False, resume=True)
    assert "qat_resumed_from_step" not in run_qat(model, other, tmp_path / "x", show_progress=False)


def test_cli_resume_flag_requires_a_checkpoint(tmp_path) -> None:
    from click.testing import CliRunner

    from recipe_engine.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe(steps=2)))
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_find_resumable_policy(tmp_path) -> None:
    ckpt.save(tmp_path / ckpt.CHECKPOINT_FILE, {"sha256": "a" * 64, "model": {"w": torch.ones(2)}})
    assert ckpt.find_resumable(tmp_path, "a" * 64, None)["model"]["w"].sum() == 2
    assert ckpt.find_resumable(tmp_path, "a" * 64, False) is None  # --no-resume starts afresh
    assert ckpt.find_resumable(tmp_path, "b" * 64, None) is None  # another recipe: start afresh
    (tmp_path / "bad").mkdir()
    torch.save({"format": "something else"}, tmp_path / "bad" / ckpt.CHECKPOINT_FILE)
    with pytest.raises(RecipeError, match="not a recipe-engine QAT checkpoint"):
        ckpt.find_resumable(tmp_path / "bad", "a" * 64, None)


def test_rng_states_round_trip_through_weights_only(tmp_path) -> None:
    import random

    import numpy as np

    ckpt.seed_everything(3)
    state = ckpt.capture_rng()
    ckpt.save(tmp_path / "rng.pt", {"rng": state})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    ckpt.restore_rng(ckpt.load(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


# ----------------------------------------------------------------------------- Python API
def test_prepared_model_trains_in_a_plain_user_loop(tmp_path) -> None:
    """The README example: prepare -> the user's own loop -> save_quantized -> load_quantized."""
    from recipe_engine.pipeline import load_quantized, save_quantized
    from recipe_engine.train import param_groups
    from tests.train.models import build_dense, mse, regression_data

    recipe_data = {k: v for k, v in BASE.items() if k not in ("qat", "model", "data")}
    model = prepare(build_dense(), recipe_data, [b["x"] for b in regression_data(4)])
    amax_before = amax_buffers(model)
    optimizer = torch.optim.SGD(param_groups(model, lr=0.05), lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for _ in range(3):
        for batch in regression_data(8, seed=1):
            loss = mse(model(batch["x"]), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])
    assert all(torch.equal(amax_buffers(model)[k], v) for k, v in amax_before.items())
    save_quantized(model.eval(), tmp_path / "model.pt", as_loaded(recipe_data))
    restored = load_quantized(tmp_path / "model.pt", model=build_dense())
    x = regression_data(1, seed=5)[0]["x"]
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
