"""``recipe`` with a hook: ``python -m tests.hostile.killable export ARGS`` stops after the first
exported file (touching ``$READY_FILE``) until it is killed; ``failexport ARGS`` makes the second
ONNX file fail to write (a late export failure, after calibration and evaluation); ``plain ARGS``
is ``recipe ARGS``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "export":
        from recipe_engine.export import runner

        original = runner.save_onnx

        def save_then_wait(model, path):
            info = original(model, path)
            Path(os.environ["READY_FILE"]).write_text(str(os.getpid()))
            time.sleep(120)
            return info

        runner.save_onnx = save_then_wait
    elif mode == "failexport":
        from recipe_engine.export import runner
        from recipe_engine.recipe.errors import RecipeError

        original, written = runner.save_onnx, []

        def fail_second(model, path):
            if written:
                raise RecipeError(f"{Path(path).name}: simulated export failure")
            written.append(path)
            return original(model, path)

        runner.save_onnx = fail_second
    from recipe_engine.cli import main as cli

    sys.argv = ["recipe", *args]
    cli()


if __name__ == "__main__":
    main()
