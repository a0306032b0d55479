"""The engine's histogram collection gives pytorch-quantization's counts and edges, bit for bit."""

from __future__ import annotations

import pytest
import torch
from pytorch_quantization.calib import HistogramCalibrator

from recipe_engine.backends.pytorch_quantization.calibrators import FastHistogramCalibrator, seed_histogram
from recipe_engine.calib import histogram


def _batches(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    relu = torch.relu(torch.randn(5000, 16, generator=g))
    signed = torch.randn(3000, 8, generator=g) * 3.0  # negatives, wider range: the histogram grows
    zeros = torch.zeros(100)
    small = torch.rand(700, generator=g) * 0.01
    huge = torch.relu(torch.randn(2000, generator=g)) * 40.0
    return [relu, signed, relu, zeros, small, huge, huge, relu.half().float() * 2, signed]


@pytest.mark.parametrize("asynchronous", [True, False], ids=["worker", "inline"])
@pytest.mark.parametrize("skip_zeros", [False, True])
def test_counts_and_edges_identical_to_upstream(monkeypatch, asynchronous: bool, skip_zeros: bool) -> None:
    monkeypatch.setenv("RECIPE_CALIB_ASYNC", "1" if asynchronous else "0")
    for seed in range(3):
        ours = FastHistogramCalibrator(8, None, False, num_bins=2048, skip_zeros=skip_zeros)
        theirs = HistogramCalibrator(8, None, False, num_bins=2048, skip_zeros=skip_zeros)
        batches = [x for x in _batches(seed) if not skip_zeros or x.any()]  # upstream: max() of nothing fails
        for x in batches:  # the same object twice in a row (huge, huge) takes the repeat path
            ours.collect(x)
            theirs.collect(x)
        assert ours._num_bins == theirs._num_bins
        assert torch.equal(ours._calib_bin_edges, theirs._calib_bin_edges)
        assert torch.equal(ours._calib_hist, theirs._calib_hist)
        assert ours._calib_hist.dtype == theirs._calib_hist.dtype == torch.float32


def test_repeat_of_a_modified_tensor_is_recomputed(monkeypatch) -> None:
    """An in-place change between two collects of one tensor bumps its version: no reuse."""
    monkeypatch.setenv("RECIPE_CALIB_ASYNC", "1")
    x = torch.relu(torch.randn(4000))
    ours, theirs = FastHistogramCalibrator(8, None, True), HistogramCalibrator(8, None, True)
    for cal in (ours, theirs):
        cal.collect(x)
    x.mul_(0.5)
    for cal in (ours, theirs):
        cal.collect(x)
    x.mul_(3.0)  # grows the range
    for cal in (ours, theirs):
        cal.collect(x)
        cal.collect(x)
    assert torch.equal(ours._calib_hist, theirs._calib_hist)
    assert torch.equal(ours._calib_bin_edges, theirs._calib_bin_edges)
    assert ours._calib_hist.sum() == 4 * x.numel()


def test_seeded_grid_reset_and_later_reads_wait_for_the_worker(monkeypatch) -> None:
    monkeypatch.setenv("RECIPE_CALIB_ASYNC", "1")
    ours, theirs = FastHistogramCalibrator(8, None, False), HistogramCalibrator(8, None, False)
    batches = _batches(7)
    for cal in (ours, theirs):
        seed_histogram(cal, 2.5)
        for x in batches:
            cal.collect(x)
    assert torch.equal(ours._calib_hist, theirs._calib_hist)
    ours.reset()
    theirs.reset()
    assert ours._calib_hist is None and ours._num_bins == theirs._num_bins
    ours.collect(batches[0])
    theirs.collect(batches[0])
    assert torch.equal(ours._calib_hist, theirs._calib_hist)


def test_worker_error_surfaces_on_wait() -> None:
    work = histogram.Worker()

    def boom() -> None:
        raise ValueError("bad update")

    work.submit(boom, 10)
    with pytest.raises(ValueError, match="bad update"):
        work.wait()
    work.submit(lambda: None, 10)
    work.wait()  # the error was reported once


@pytest.mark.parametrize("asynchronous", ["1", "0"])
def test_recipe_amax_identical_to_upstream_collection(monkeypatch, asynchronous: str) -> None:
    """Every quantizer of the digits recipe: the same amax as with pytorch-quantization's own collect()."""
    from recipe_engine import data as data_mod
    from recipe_engine.pipeline import prepare
    from recipe_engine.quant import backend
    from recipe_engine.quant.apply import get_state
    from recipe_engine.recipe.loader import load_recipe
    from tests.conftest import RECIPES

    monkeypatch.setenv("RECIPE_CALIB_ASYNC", asynchronous)
    loaded = load_recipe(RECIPES / "digits_int8.yaml", overrides=["calibration.batches=3", "export=[]"])
    batches = data_mod.make_data(loaded, "calibration")

    def amax(collect) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(FastHistogramCalibrator, "collect", collect)
        model = prepare(data_mod.build_model(loaded), loaded, batches, data_mod.forward_fn(loaded))
        return {names[0]: backend.get_amax(q) for names, q in get_state(model).unique()}

    ours, theirs = amax(FastHistogramCalibrator.collect), amax(HistogramCalibrator.collect)
    assert len(ours) == 16 and ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_forked_child_does_not_inherit_pending_work() -> None:
    """A DataLoader worker forked during calibration must not wait on the parent's background thread."""
    import os

    release = __import__("threading").Event()
    histogram.worker().submit(release.wait, 10)  # the parent's worker is busy when the child is forked
    pid = os.fork()
    if pid == 0:  # child: a fresh worker, nothing pending (SIGALRM ends a child that would wait forever)
        __import__("signal").alarm(10)
        try:
            histogram.worker().wait()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    release.set()
    _, status = os.waitpid(pid, 0)
    histogram.worker().wait()
    assert os.waitstatus_to_exitcode(status) == 0
