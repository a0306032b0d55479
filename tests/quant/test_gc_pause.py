"""Recipe application runs with Python's cyclic collector paused, and leaves it as it found it."""

from __future__ import annotations

import gc

import pytest

from recipe_engine.application import apply_loaded
from recipe_engine.data import default_forward
from recipe_engine.recipe.loader import as_loaded
from recipe_engine.util.gcpause import no_gc_passes
from tests.helpers import build_dense, dense_batches
from tests.pipeline.test_calibration import RECIPE


def test_no_collection_during_apply_and_collector_restored() -> None:
    passes: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            passes.append(info["generation"])

    loaded, model, batches = as_loaded(RECIPE), build_dense(), dense_batches()
    thresholds = gc.get_threshold()
    gc.set_threshold(5, 1, 1)  # a collection every few allocations, were the collector running
    gc.callbacks.append(seen)
    try:
        state = apply_loaded(model, loaded, batches, default_forward, None)
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*thresholds)
    assert passes == []
    assert len(state.quantizers) > 4 and state.fused  # it did apply the recipe
    assert gc.isenabled()


def test_collector_restored_after_an_error_and_left_off_if_it_was_off() -> None:
    @no_gc_passes
    def fails() -> None:
        assert not gc.isenabled()
        raise ValueError("boom")

    with pytest.raises(ValueError):
        fails()
    assert gc.isenabled()
    gc.disable()
    try:
        no_gc_passes(lambda: None)()
        assert not gc.isenabled()
    finally:
        gc.enable()
