"""User code that goes wrong in every way a recipe can name (factories, forward, evaluate), and
helpers of the fault tests: a data factory and a writer that signal readiness through a file and
then wait to be killed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from tests.helpers import build_dense, dense_batches


def broken_factory():
    raise ValueError("the weights server is down")  # USER-FRAME factory


def broken_data(count: int = 3):
    return {"not": "batches"}[count]  # USER-FRAME data


def broken_forward(model, batch):
    raise RuntimeError("forward of the user failed")  # USER-FRAME forward


def wrong_shape_data(count: int = 3):
    return [torch.randn(2, 5, 8, 8) for _ in range(count)]  # 5 channels, the model takes 3


def broken_evaluate(model, batches):
    raise ZeroDivisionError("no validation samples")  # USER-FRAME evaluate


def list_evaluate(model, batches):
    return [1.0, 2.0]


def rank1_fails(count: int = 6):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 cannot read its shard")
    return dense_batches(count)


class _Blocking:
    """Batches that, from batch ``at`` on, touch ``$READY_FILE`` and sleep (to be killed)."""

    def __init__(self, batches: list, at: int):
        self.batches, self.at = batches, at

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for index, batch in enumerate(self.batches):
            if index == self.at and os.environ.get("READY_FILE"):
                Path(os.environ["READY_FILE"]).write_text(str(os.getpid()))
                time.sleep(120)
            yield batch


def blocking_data(count: int = 3, at: int = 1):
    """Calibration batches that block at batch ``at``."""
    return _Blocking(dense_batches(count), at)


def dense_model():
    return build_dense()


def blocking_train(count: int = 8, at: int = 3):
    """QAT batches that block at batch ``at`` (after a checkpoint)."""
    from tests.train.models import regression_data

    return _Blocking(regression_data(count, seed=1), at)
