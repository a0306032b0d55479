"""Shared recipe and helpers of the QAT tests (a calibrated tiny model from a recipe dict)."""

from __future__ import annotations

import copy

import torch

from recipe_engine import data as data_mod
from recipe_engine.pipeline import apply, as_loaded, calibrate
from recipe_engine.recipe.loader import LoadedRecipe

BASE = {
    "recipe": "tiny-qat", "version": "1.0.0",
    "model": {"factory": "tests.train.models:build_dense"},
    "data": {"calibration": {"factory": "tests.train.models:regression_data", "kwargs": {"count": 4}},
             "train": {"factory": "tests.train.models:regression_data", "kwargs": {"count": 8, "seed": 1}},
             "validation": {"factory": "tests.train.models:regression_data", "kwargs": {"count": 2, "seed": 2}},
             "forward": "tests.train.models:forward", "loss": "tests.train.models:mse",
             "evaluate": "tests.train.models:energy"},
    "quantizers": {"act": {"calibrator": "histogram"}, "w": {"per_channel": True}},
    "fuse": [{"pattern": ["Conv2d|ConvTranspose2d", "BatchNorm2d", "ReLU"]}],
    "rules": [{"select": {"type": ["Conv2d", "ConvTranspose2d"]}, "quantize": {"input": "act", "weight": "w"}}],
    "calibration": {"method": "mse", "num_bins": 256, "start_bin": 64},  # few bins: quick report plots
    "qat": {"steps": 12, "optimizer": {"name": "Adam", "kwargs": {"lr": 3e-3}}, "log_every": 4},
}


def recipe(**qat) -> dict:
    """BASE with ``qat`` keys overridden."""
    data = copy.deepcopy(BASE)
    data["qat"].update(qat)
    return data


def prepared(data: dict) -> tuple[torch.nn.Module, LoadedRecipe]:
    """The recipe's model, fused, quantized and calibrated (what `recipe run` hands to QAT)."""
    loaded = as_loaded(data)
    model = data_mod.build_model(loaded)
    batches = data_mod.make_data(loaded, "calibration")
    forward = data_mod.forward_fn(loaded)
    apply(model, loaded, batches, forward)
    calibrate(model, loaded, batches, forward, show_progress=False)
    return model, loaded


def amax_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every calibrated amax buffer."""
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_amax")}


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the whole state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
