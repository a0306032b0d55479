"""Evaluation progress bars: the user's evaluate loop sees its batches unchanged; the bar follows the first pass."""

from __future__ import annotations

import pytest

from recipe_engine.util import progress as progress_mod
from recipe_engine.util.progress import ProgressBatches, with_bar
from recipe_engine.zoo import digits


class Loader(list):
    dataset = "the-dataset"  # an attribute a DataLoader-style evaluate may read


def test_without_a_terminal_the_batches_are_passed_through_unwrapped() -> None:
    batches = Loader([1, 2, 3])
    assert with_bar(batches, "FP32") is batches  # tests run with RECIPE_NO_PROGRESS=1 and no tty


def test_the_bar_advances_over_the_first_pass_only_and_the_batches_behave_as_before(monkeypatch) -> None:
    seen = []

    def recording(items, *, total=None, description="", enabled=True):
        seen.append((description, total))
        yield from items

    monkeypatch.setattr(progress_mod, "progress_enabled", lambda: True)
    monkeypatch.setattr(progress_mod, "progress", recording)
    batches = Loader(digits.val_data())
    wrapped = with_bar(batches, "INT8")
    assert isinstance(wrapped, ProgressBatches)
    assert len(wrapped) == len(batches) and wrapped[0] is batches[0] and wrapped.dataset == "the-dataset"
    model = digits.build(pretrained=True).eval()
    # digits.evaluate iterates twice (forwards, then labels): the same result, one bar (first pass)
    assert digits.evaluate(model, wrapped) == pytest.approx(digits.evaluate(model, batches))
    assert seen == [("INT8", len(batches))]
    assert [id(b) for b in wrapped] == [id(b) for b in batches]  # later passes: the same items, no bar
    assert seen == [("INT8", len(batches))]
    assert not isinstance(with_bar(iter(batches), "x"), ProgressBatches)  # unsized: passed through, no bar
