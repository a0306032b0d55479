"""FastMaxCalibrator: the same amax as pytorch-quantization's MaxCalibrator, without re-reducing a weight."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from pytorch_quantization import utils as quant_utils
from pytorch_quantization.calib import MaxCalibrator

from recipe_engine.backends.pytorch_quantization.calibrators import FastMaxCalibrator, load_statistics


@pytest.fixture
def reductions(monkeypatch):
    """Counts upstream's amax reductions (what the skip saves)."""
    calls = []
    original = quant_utils.reduce_amax

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(quant_utils, "reduce_amax", counting)
    return calls


def _pair(axis):
    return MaxCalibrator(8, axis, False), FastMaxCalibrator(8, axis, False)


@pytest.mark.parametrize("axis", [None, 0])
def test_repeated_weight_is_reduced_once_with_the_same_amax(axis, reductions) -> None:
    weight = torch.randn(16, 8, 3, 3)
    upstream, fast = _pair(axis)
    for _ in range(4):
        upstream.collect(weight)
    upstream_calls = len(reductions)
    for _ in range(4):
        fast.collect(weight)
    assert len(reductions) - upstream_calls == 1
    assert torch.equal(fast.compute_amax(), upstream.compute_amax())


def test_in_place_change_view_change_and_new_tensor_are_reduced_again() -> None:
    weight = torch.randn(16, 8)
    upstream, fast = _pair(0)
    steps = [lambda w: w, lambda w: w.mul_(3.0), lambda w: w, lambda w: w[:, :4], lambda w: w.t().t(),
             lambda w: w.clone() * 5]
    for step in steps:
        x = step(weight)
        upstream.collect(x)
        fast.collect(x)
        assert torch.equal(fast.compute_amax(), upstream.compute_amax())
    weight[3].view(-1)[0] = 1e4  # a write through a view bumps the shared version counter
    upstream.collect(weight)
    fast.collect(weight)
    assert torch.equal(fast.compute_amax(), upstream.compute_amax())
    assert float(fast.compute_amax()[3]) == 1e4


def test_replaced_or_reset_amax_is_not_trusted() -> None:
    weight = torch.randn(32)
    upstream, fast = _pair(None)
    for calibrator in (upstream, fast):
        calibrator.collect(weight)
        load_statistics(calibrator, {"amax": torch.tensor(0.01)})  # e.g. merged statistics
        calibrator.collect(weight)
    assert torch.equal(fast.compute_amax(), upstream.compute_amax())
    fast.compute_amax().fill_(0.0)  # written in place
    fast.collect(weight)
    assert float(fast.compute_amax()) == float(weight.abs().max())
    fast.reset()
    assert fast.compute_amax() is None
    fast.collect(weight)
    assert float(fast.compute_amax()) == float(weight.abs().max())


def test_pickles_and_copies(reductions) -> None:
    weight = torch.randn(8)
    fast = FastMaxCalibrator(8, None, False)
    fast.collect(weight)
    for clone in (pickle.loads(pickle.dumps(fast)), copy.deepcopy(fast)):
        before = len(reductions)
        clone.collect(weight)  # no memory of the tensor: reduced again, same amax
        assert len(reductions) == before + 1
        assert torch.equal(clone.compute_amax(), fast.compute_amax())


def test_negative_values_as_upstream() -> None:
    x = torch.tensor([-3.0, 1.0, 2.0])
    upstream, fast = _pair(None)
    for _ in range(2):
        upstream.collect(x)
        fast.collect(x)
    assert torch.equal(fast.compute_amax(), upstream.compute_amax())
    assert float(fast.compute_amax()) == 3.0
