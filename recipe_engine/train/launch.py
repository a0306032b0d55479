"""``recipe run --nproc N``: torchrun without its tracebacks, one line per failed rank.

The parent runs ``python -m recipe_engine.train.launch TORCHRUN-ARGS``, which calls torchrun's
``run`` and turns its ``ChildFailedError`` into exit code 1. Every rank writes its error (one
RecipeError, or the exception that stopped it) to ``$RECIPE_RANK_ERRORS/rank<N>.json`` instead of
printing it (``report_rank_error``); the parent then prints one line per failed rank and the
full message of the rank that failed first. Children run with ``PYTHONSAFEPATH=1`` so that the
working directory is not put on ``sys.path``: they import what ``recipe run`` imports in one
process (a stray ``onnx.py`` in the working directory is not imported).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ERRORS_ENV = "RECIPE_RANK_ERRORS"
_PEER_WORDS = ("connection closed by peer", "connection reset", "broken pipe", "gloo", "nccl", "timed out")


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command that runs ``recipe ARGS`` on ``nproc`` local ranks under torchrun."""
    return [sys.executable, "-m", "recipe_engine.train.launch", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "recipe_engine.cli", *args]


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``recipe ARGS`` under torchrun with ``nproc`` processes; print one line per failed rank."""
    folder = tempfile.mkdtemp(prefix="recipe-ranks-")
    env = dict(os.environ, PYTHONSAFEPATH="1", **{ERRORS_ENV: folder})
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        code = subprocess.call(torchrun_command(nproc, args), env=env)
        if code != 0:
            print(summary(Path(folder), nproc), file=sys.stderr)
        return 1 if code else 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def summary(folder: Path, nproc: int) -> str:
    """One line per failed rank, then the full error of the rank that failed first."""
    found = {}
    for path in folder.glob("rank*.json"):
        try:
            found[int(path.stem[4:])] = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            continue
    lines = []
    for rank in range(nproc):
        entry = found.get(rank)
        if entry is None:
            lines.append(f"rank {rank}: stopped (another rank failed)")
        else:
            lines.append(f"rank {rank}: {entry['message'].splitlines()[0]}")
    if found:
        first = min(found.values(), key=lambda e: (e["peer"], e["time"]))
        lines += ["", f"error (rank {first['rank']}): {first['message']}"]
    else:
        lines.append("error: the ranks stopped without reporting an error (killed?)")
    return "\n".join(lines)


def under_launch() -> bool:
    return bool(os.environ.get(ERRORS_ENV)) and "RANK" in os.environ


def install_sigterm_handler() -> None:
    """Under ``--nproc``, torchrun stops the other ranks with SIGTERM: let them record the failure first."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)


def report_rank_error(message: str, peer_hint: str = "") -> None:
    """Record this rank's error for the parent's summary (written atomically)."""
    rank = int(os.environ.get("RANK", "0"))
    text = message.lower() + peer_hint.lower()
    entry = {"rank": rank, "message": message, "time": time.time(),
             "peer": any(word in text for word in _PEER_WORDS)}
    if entry["peer"]:
        entry["message"] = f"stopped: lost contact with another rank ({message.split(':')[0]})"
    folder = Path(os.environ[ERRORS_ENV])
    tmp = folder / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(entry), encoding="utf-8")
    os.replace(tmp, folder / f"rank{rank}.json")


def _torchrun(argv: Sequence[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(list(argv))
    try:
        run(args)
    except ChildFailedError:
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun(sys.argv[1:]))
