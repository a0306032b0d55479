"""Zoo tests run single-threaded: on a shared 2-core machine, oversubscribed torch/OpenMP
threads make spconv's CPU path many times slower. The previous setting is restored."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
