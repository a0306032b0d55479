"""Run ``recipe run`` as one rank of a torchrun job (used by test_distributed.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/dist_worker.py RECIPE OUT

Every rank gets its own run directory ``OUT/rank<N>``: rank 0 must fill it, the others must leave
theirs empty (only rank 0 writes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recipe_engine.pipeline import run_recipe  # noqa: E402
from recipe_engine.recipe import load_recipe  # noqa: E402
from recipe_engine.train import distributed  # noqa: E402


def main() -> None:
    recipe, out = sys.argv[1], Path(sys.argv[2])
    metrics = run_recipe(load_recipe(recipe), out / f"rank{os.environ['RANK']}", show_progress=False)
    assert not distributed.is_distributed()  # run_recipe joined and left the process group
    print(f"rank {os.environ['RANK']} done: calibration_batches={metrics['calibration_batches']}", flush=True)


if __name__ == "__main__":
    main()
