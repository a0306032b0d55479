"""The run directory of ``recipe run``: one coherent run, built aside and moved into place.

For a run directory ``runs/x`` every name lives in ``runs/`` (one file system, so renames are atomic):

- ``.x.lock``     held (``flock``) by the active run; holds its pid, host, start time and recipe.
                  A second run is refused while the lock is held; a lock file left by a dead run
                  is taken over with a message (the kernel drops a dead process's ``flock``).
- ``.x.staging``  the run being built; every file of the run is written here.
- ``.x.ready``    the finished run, renamed from ``.x.staging`` (the commit point).
- ``.x.old``      the previous complete run, while the new one is moved into place.
- ``x``           the last complete run.
- ``x.failed``    the record of the last failed (or killed) run newer than ``x``: its files so far,
                  ``metrics.json`` with ``status`` and ``failure``, ``report.md``. Removed when a later
                  run completes.

Crash points (``kill -9`` anywhere), repaired by the next run while it holds the lock:
before the commit rename, ``x`` is untouched and ``.x.staging`` is stale: it becomes ``x.failed``
(status ``killed``, temp files removed). After it, ``.x.ready`` is a complete run: the next run
finishes the move (``x`` -> ``.x.old``, ``.x.ready`` -> ``x``, delete ``.x.old``). Between those two
renames ``x`` is briefly absent (readers see either the old or the new run, never a mix).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..recipe.errors import RecipeError
from .atomic import TEMP_SUFFIX, atomic_write_text, confined, disk_error
from .jsonio import json_text

if TYPE_CHECKING:
    from ..recipe.loader import LoadedRecipe

QAT_FILES = ("qat_checkpoint.pt", "qat_best.pt")


def _notice(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _wrap_os(exc: OSError, what: str) -> RecipeError:
    problem = disk_error(exc, what)
    if problem is not None:
        return problem
    return RecipeError(f"cannot prepare the run directory {what}: {exc.strerror or exc}")


class RunLock:
    """An exclusive ``flock`` on ``path`` that records its owner in the file."""

    def __init__(self, path: Path, target: Path):
        self.path = path
        self.target = target
        self.fd: int | None = None
        self.previous: dict[str, Any] = {}

    def acquire(self, recipe: str) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RecipeError(
                    f"{self.target} is in use by another run ({_describe(owner)})",
                    hint="wait until it finishes, or choose another --out directory") from None
            try:  # the lock file may have been unlinked and re-created by its previous owner meanwhile
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_owner(fd)
        self.previous = previous
        if previous:
            _notice(f"took over the stale lock {self.path} of a run that did not finish ({_describe(previous)})")
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "recipe": recipe,
                 "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # still holding the lock: a waiter re-checks the inode
        os.close(self.fd)
        self.fd = None


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "owner unknown"
    return (f"pid {owner.get('pid')} on {owner.get('host')}, recipe {owner.get('recipe')}, "
            f"started {owner.get('started')}")


class RunDirectory:
    """The files around one run directory ``target`` (see the module docstring)."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        name = self.target.name
        if name in ("", ".", ".."):
            raise RecipeError(f"--out {target}: name a directory, e.g. runs/my-run")
        parent = self.target.parent
        self.staging = parent / f".{name}.staging"
        self.ready = parent / f".{name}.ready"
        self.trash = parent / f".{name}.old"
        self.failed = parent / f"{name}.failed"
        self.lock = RunLock(parent / f".{name}.lock", self.target)

    # ------------------------------------------------------------------ start
    def open(self, recipe: str) -> Path:
        """Lock, repair what a killed run left, and create an empty staging directory."""
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _wrap_os(exc, str(parent)) from None
        if self.target.exists() and not self.target.is_dir():
            raise RecipeError(f"--out {self.target} is a file, not a directory")
        for path in (parent, self.target):
            if path.exists() and not os.access(path, os.W_OK | os.X_OK):
                raise RecipeError(f"cannot write the run directory {self.target}: {path} is not writable",
                                  hint="choose another --out directory or fix its permissions")
        try:
            self.lock.acquire(recipe)
        except OSError as exc:
            raise _wrap_os(exc, str(self.lock.path)) from None
        try:
            self._repair()
            self._check_replaceable()
            self.staging.mkdir()
        except OSError as exc:
            self.lock.release()
            raise _wrap_os(exc, str(self.staging)) from None
        except BaseException:
            self.lock.release()
            raise
        return self.staging

    def _check_replaceable(self) -> None:
        """A complete run replaces ``target`` as a whole: refuse a directory that is not a run directory."""
        if self.target.is_dir() and any(self.target.iterdir()) and not (self.target / "recipe.lock.yaml").is_file():
            raise RecipeError(f"--out {self.target} is not empty and is not a run directory (no recipe.lock.yaml); "
                              "a run replaces its directory as a whole",
                              hint="choose a new or empty --out directory")

    def _repair(self) -> None:
        if self.ready.exists():  # killed between the commit rename and the move into place
            self._move_into_place()
            _notice(f"finished moving the last complete run into {self.target}")
        if self.trash.exists():
            shutil.rmtree(self.trash, ignore_errors=True)
        if self.staging.exists():
            self._record_killed()

    def _record_killed(self) -> None:
        for tmp in self.staging.rglob(f".*{TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        metrics_file = self.staging / "metrics.json"
        metrics: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        if metrics.get("status") != "failed":
            owner = self.lock.previous
            error = f"the run ({_describe(owner)}) was killed before it finished; no error was recorded"
            metrics.setdefault("recipe", owner.get("recipe"))
            metrics.update(status="killed", failure={"stage": "unknown", "error": error})
            atomic_write_text(metrics_file, json_text(metrics, indent=2) + "\n")
            atomic_write_text(self.staging / "report.md",
                              f"# FAILED (killed): {metrics.get('recipe')}\n\n{error}.\n\n"
                              "The files here are what it had written; metrics.json holds its figures so far.\n")
        self._replace_failed()
        _notice(f"an earlier run into {self.target} was killed before it finished; its files are in {self.failed}")

    def _replace_failed(self) -> None:
        if self.failed.exists():
            shutil.rmtree(self.failed)
        os.rename(self.staging, self.failed)

    # ------------------------------------------------------------------ QAT checkpoints
    def checkpoint_sources(self) -> list[Path]:
        """Run directories that may hold a QAT checkpoint to resume from, newest first."""
        return [d for d in (self.failed, self.target) if (d / QAT_FILES[0]).is_file()]

    def seed_checkpoint(self, source: Path) -> None:
        """Start the staging directory with ``source``'s QAT checkpoint files (hard links when possible)."""
        for name in QAT_FILES:
            if (source / name).is_file():
                try:
                    os.link(source / name, self.staging / name)
                except OSError:
                    shutil.copy2(source / name, self.staging / name)

    # ------------------------------------------------------------------ end
    def commit(self) -> None:
        """Move the finished staging directory into place, replacing the previous complete run."""
        os.rename(self.staging, self.ready)  # the commit point
        self._move_into_place()
        if self.failed.exists():
            shutil.rmtree(self.failed, ignore_errors=True)

    def _move_into_place(self) -> None:
        if self.target.exists():
            if self.trash.exists():
                shutil.rmtree(self.trash)
            os.rename(self.target, self.trash)
        os.rename(self.ready, self.target)
        shutil.rmtree(self.trash, ignore_errors=True)

    def fail(self) -> Path:
        """Keep the staging directory as the failed-run record (the previous complete run is untouched)."""
        for tmp in self.staging.rglob(f".*{TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        self._replace_failed()
        return self.failed

    def close(self) -> None:
        self.lock.release()


def write_failure_report(out: Path, loaded: Any, metrics: dict[str, Any], report: Path | None) -> Path:
    """``report.md`` of a failed run: the failure first, then the full report when one could be written."""
    failure = metrics["failure"]
    head = [f"# FAILED: {loaded.spec.recipe} {loaded.spec.version}", "",
            f"The run failed during **{failure['stage']}**:", "", "```", failure["error"], "```", ""]
    figures = [(phase, key, value) for phase in ("fp32", "int8", "qat")
               for key, value in (metrics.get(phase) or {}).items()]
    if figures and report is None:
        head += ["| metric | value |", "|---|---|", *[f"| {p} {k} | {v:.4g} |" for p, k, v in figures], ""]
    body = ""
    target = out / "report.md"
    if report is not None and target.is_file():
        body = target.read_text(encoding="utf-8")
    else:
        head.append("(the full report needs a calibrated model; all figures so far are in metrics.json)")
    atomic_write_text(target, "\n".join(head) + "\n" + body)
    return target


# ----------------------------------------------------------------------------- one recipe run
@dataclass
class RunRecord:
    """What a run has done so far: its metrics, the stage it is in, what the failure report needs."""

    metrics: dict[str, Any] = field(default_factory=dict)
    stage: str = "start"
    report: Callable[[], Any] | None = None


def open_for_recipe(run_dir: RunDirectory, loaded: LoadedRecipe, resume: bool | None, overwrite: bool) -> None:
    """Lock and prepare ``run_dir``; keep a QAT checkpoint of another recipe unless ``overwrite``."""
    from ..train import checkpoint as ckpt

    run_dir.open(loaded.spec.recipe)
    try:
        sources = run_dir.checkpoint_sources()
        for source in sources:
            found = ckpt.load(source / ckpt.CHECKPOINT_FILE)
            if found.get("sha256") != loaded.sha256 and not overwrite and resume is not True:
                raise RecipeError(
                    f"{source} holds a QAT checkpoint of another recipe ({found.get('recipe')} "
                    f"{found.get('version')}, sha256 {str(found.get('sha256'))[:12]}); this run would replace it",
                    hint="choose another --out directory, or pass --overwrite to replace it")
        if loaded.spec.qat is not None and resume is not False and sources:
            run_dir.seed_checkpoint(sources[0])
        elif resume is True and loaded.spec.qat is not None:
            raise RecipeError(f"--resume: {run_dir.target / ckpt.CHECKPOINT_FILE} does not exist",
                              hint="run once without --resume first")
    except BaseException:
        shutil.rmtree(run_dir.staging, ignore_errors=True)
        run_dir.close()
        raise


def record_failure(run_dir: RunDirectory, loaded: LoadedRecipe, record: RunRecord, exc: BaseException) -> None:
    """Write metrics.json and report.md (with the failure) into the staging directory, keep it as ``.failed``."""
    if isinstance(exc, RecipeError):
        text = exc.format()
    elif isinstance(exc, KeyboardInterrupt):
        text = "interrupted"
    else:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    record.metrics.update(status="failed", failure={"stage": record.stage, "error": text})  # the report shows it
    metrics = record.metrics
    if not run_dir.staging.is_dir():  # the commit had begun: the next run finishes it
        return
    try:
        with confined(run_dir.staging):
            atomic_write_text(run_dir.staging / "metrics.json", json_text(metrics, indent=2, default=str) + "\n")
            report = None
            if record.report is not None:
                with contextlib.suppress(Exception):
                    report = record.report()
            write_failure_report(run_dir.staging, loaded, metrics, report)
    except RecipeError:  # e.g. the disk is full: keep what is there
        pass
    try:
        where = run_dir.fail()
        print(f"the failed run's record (metrics.json, report.md, files so far): {where}", file=sys.stderr)
    except OSError as problem:
        print(f"could not keep the failed run's record: {problem}", file=sys.stderr)
