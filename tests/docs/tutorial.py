"""Run docs/tutorial.md: its ``sh`` blocks in order in a scratch directory, checked against what it shows.

Block kinds (the fence's info string):
- ``sh``: commands, run with ``bash -e -o pipefail``; the ``export`` lines of earlier blocks are
  repeated first. A block whose first line is ``# fails on purpose`` must exit non-zero.
- ``text`` right after an ``sh`` block: the output it shows. Every line of it, except ``...``
  lines, must appear in (a line of) the block's output, compared with numbers and runs of
  spaces normalised (timings, table widths and the scratch directory's path vary; words, keys
  and structure may not).
- ``yaml FILE``: an excerpt of a file the commands wrote; its lines (except ``...``) must appear
  in that file, in order.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?")


@dataclass
class Block:
    kind: str
    arg: str
    text: str
    line: int


def blocks(path: Path = TUTORIAL) -> list[Block]:
    source = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(source):
        kind, _, arg = match[1].strip().partition(" ")
        found.append(Block(kind, arg.strip(), match[2], source[:match.start()].count("\n") + 1))
    return found


def normalise(line: str) -> str:
    return " ".join(_NUMBER.sub("N", line).split())


@dataclass
class Ran:
    block: Block
    rc: int
    output: str
    seconds: float = 0.0


def run_all(workdir: Path, timeout: float = 300, path: Path = TUTORIAL) -> list[Ran]:
    """Run every ``sh`` block in ``workdir`` (with a copy of examples/); returns what each printed."""
    shutil.copytree(ROOT / "examples", workdir / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECIPE_NO_PROGRESS": "1", "COLUMNS": "120",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    exports: list[str] = []
    ran = []
    for block in blocks(path):
        if block.kind != "sh":
            continue
        script = "\n".join(exports + [block.text])
        started = time.perf_counter()
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout)
        ran.append(Ran(block, proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started))
        exports += [line for line in block.text.splitlines() if line.startswith("export ")]
    return ran


def problems(ran: list[Ran], workdir: Path, path: Path = TUTORIAL) -> list[str]:
    """Every way the tutorial and what its commands did disagree."""
    found = []
    outputs = {r.block.line: r for r in ran}
    previous: Ran | None = None
    for block in blocks(path):
        if block.kind == "sh":
            previous = outputs[block.line]
            fails = block.text.lstrip().startswith("# fails on purpose")
            if (previous.rc != 0) != fails:
                found.append(f"{path.name}:{block.line}: exit status {previous.rc}, expected "
                             f"{'non-zero' if fails else 0}:\n{previous.output[-3000:]}")
        elif block.kind == "text" and previous is not None:
            have = [normalise(line) for line in previous.output.splitlines()]
            for line in block.text.splitlines():
                if line.strip() and line.strip() != "..." and not any(normalise(line) in h for h in have):
                    found.append(f"{path.name}:{block.line}: not in the output of the command above: {line!r}")
        elif block.kind == "yaml" and block.arg:
            lines = (workdir / block.arg).read_text().splitlines() if (workdir / block.arg).exists() else []
            position = 0
            for line in block.text.splitlines():
                if line.strip() == "...":
                    continue
                try:
                    position = lines.index(line, position) + 1
                except ValueError:
                    found.append(f"{path.name}:{block.line}: not in {block.arg} (in this order): {line!r}")
    return found


if __name__ == "__main__":  # print every block's output (to write the tutorial's text blocks) and the problems
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        done = run_all(Path(tmp))
        for item in done:
            print(f"===== tutorial.md:{item.block.line} rc={item.rc} {item.seconds:.1f} s\n{item.output}")
        for problem in problems(done, Path(tmp)):
            print("PROBLEM", problem)
        if len(sys.argv) > 1:
            shutil.copytree(tmp, sys.argv[1], dirs_exist_ok=True)
