"""``recipe init``: build the model, trace one batch, draft every section, write it, check it with ``plan``.

The draft is checked the way a user would check it: it is loaded with the engine's loader and
``recipe plan`` runs on it (model build, fusions, quantizers, op sites, share groups, disable
list, and the export pre-check that traces each export's module). An entry that ``plan``
rejects (typically an export the format cannot express) is turned into a comment carrying the
error, and the check runs again, so the file that is kept passes ``plan``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import data as data_mod
from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe, load_recipe
from ..util.atomic import atomic_write_bytes, atomic_write_text
from ..util.imports import import_callable
from ..util.usercode import is_engine_error, located
from .dict_io import add_dict_io
from .entries import Entry
from .exports import draft_exports
from .fusions import draft_fusions
from .quantize import draft_quantization
from .trace import trace_model
from .writer import Section, render

BASE = "base/int8_tensorrt.yaml"
MAX_REPAIRS = 16
_ENTRY_KEY = re.compile(r"^(fuse|rules|share|disable|export)\[(\d+)\]")


@dataclass
class DraftResult:
    path: Path
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    plan: Any = None  # the PlanResult of the kept draft
    expected_fusions: int = 0
    repaired: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """What was written, in a few lines, and what to do next."""
        count = {s.key: len([e for e in s.entries if e.commented is None]) for s in self.sections}
        left = sum(1 for s in self.sections for e in s.entries if e.commented is not None)
        def n(value: int, word: str) -> str:
            return f"{value} {word}" + ("" if value == 1 else "s")

        lines = [f"wrote {self.path}: {_entries(count['fuse'])} "
                 f"({n(len(self.plan.fusions), 'fusion')}), {n(count['rules'], 'rule')} "
                 f"({n(len(self.plan.quantizers), 'quantizer')}), {n(len(self.plan.shares), 'share group')}, "
                 f"{len(self.plan.disabled)} quantizers disabled, {n(count['export'], 'export')}"]
        if left:
            lines.append(f"left out (as comments, with the reason): {left} entr{'y' if left == 1 else 'ies'}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"next: recipe plan {self.path}   then   recipe run {self.path}")
        return "\n".join(lines)

    def explain(self) -> list[str]:
        """Why each entry is there, section by section, then what plan found."""
        from .writer import flow

        lines: list[str] = []
        for section in self.sections:
            if section.value is not None:
                lines.append(f"{section.key}: {flow(section.value)}")
                lines += [f"    {w}" for w in section.why]
                continue
            lines.append(f"{section.key}: {len([e for e in section.entries if e.commented is None])} entries")
            for entry in section.entries:
                mark = "  - " if entry.commented is None else "  # "
                lines.append(mark + flow(entry.value))
                lines += [f"      why: {w}" for w in entry.why]
                if entry.commented is not None:
                    lines.append(f"      {entry.commented}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.plan is not None:
            enabled = sum(1 for q in self.plan.quantizers.values() if q["enabled"])
            lines.append(f"recipe plan: fusions {len(self.plan.fusions)} (traced {self.expected_fusions}), "
                         f"quantizers {len(self.plan.quantizers)} ({enabled} enabled), share groups "
                         f"{len(self.plan.shares)}, disabled {len(self.plan.disabled)}")
        return lines


def _entries(count: int) -> str:
    return f"{count} fuse entr{'y' if count == 1 else 'ies'}"


def _name(loaded: LoadedRecipe, name: str | None) -> str:
    if name:
        return name
    module = loaded.spec.model.factory.split(":")[0].split(".")[-1]
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", module).strip("-") + "-int8-draft"


def _top(loaded: LoadedRecipe, name: str) -> dict[str, Any]:
    spec = loaded.spec
    model: dict[str, Any] = {"factory": spec.model.factory}
    if spec.model.kwargs:
        model["kwargs"] = spec.model.kwargs
    for key in ("checkpoint", "checkpoint_key"):
        if getattr(spec.model, key):
            model[key] = getattr(spec.model, key)
    data: dict[str, Any] = {}
    for split in ("calibration", "validation", "train"):
        ref = getattr(spec.data, split)
        if ref is not None:
            data[split] = {"factory": ref.factory, **({"kwargs": ref.kwargs} if ref.kwargs else {})}
    for key in ("forward", "evaluate", "loss"):
        if getattr(spec.data, key):
            data[key] = getattr(spec.data, key)
    return {"recipe": name, "version": "0.1.0", "description": f"INT8 draft for {spec.model.factory} (recipe init)",
            "extends": BASE, "model": model, "data": data}


def _first_batch(loaded: LoadedRecipe, batches: Any) -> Any:
    try:
        return next(iter(batches))
    except StopIteration:
        raise loaded.error(("data", "calibration"), "the calibration data is empty: nothing to trace") from None
    except TypeError:
        raise loaded.error(("data", "calibration"), f"the calibration factory returned a {type(batches).__name__}, "
                           "which is not iterable", hint="return a list (or iterable) of batches") from None


def _trace(loaded: LoadedRecipe, model: Any, batch: Any) -> Any:
    """Trace ``data.forward``; its errors are located at the key that names it, the tracer's frames hidden."""
    section = loaded.spec.data
    if section.forward is None:
        key, what, forward = ("data", "calibration"), "model(batch)", data_mod.default_forward
    else:
        key, what = ("data", "forward"), section.forward
        try:
            forward = import_callable(section.forward, what="data.forward")
        except RecipeError as exc:
            raise loaded.error(key, exc.headline.removeprefix("data.forward "), hint=exc.hint) from None
    try:
        return trace_model(model, batch, forward)
    except RecipeError as exc:
        raise located(loaded, key, exc, what) from None
    except Exception as exc:  # noqa: BLE001 - the user's forward may raise anything
        exc.__traceback__ = _without(exc.__traceback__, trace_model.__code__.co_filename)
        if is_engine_error(exc):
            raise
        raise located(loaded, key, exc, what) from None


def _without(tb: TracebackType | None, filename: str) -> TracebackType | None:
    """The traceback without the frames of ``filename`` (the tracer's torch-function mode)."""
    frames = []
    while tb is not None:
        if tb.tb_frame.f_code.co_filename != filename:
            frames.append(tb)
        tb = tb.tb_next
    rebuilt = None
    for frame in reversed(frames):
        rebuilt = TracebackType(rebuilt, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return rebuilt


def _sections(loaded: LoadedRecipe) -> tuple[list[Section], list[str], int]:
    model = data_mod.build_model(loaded)
    batches = data_mod.make_data(loaded, "calibration")
    batch = _first_batch(loaded, batches)
    trace = _trace(loaded, model, batch)
    fusions = draft_fusions(model, trace)
    quant = draft_quantization(model, trace)
    exports = draft_exports(quant.layers, trace.executed())
    add_dict_io(exports, model, batch, data_mod.forward_fn(loaded))
    try:
        count = min(len(batches), 16)
    except TypeError:
        count = 16
    sections = [
        Section("fuse", fusions.entries, why=["BatchNorm folding, found by following one batch through the model"]),
        Section("rules", quant.rules, why=["what gets quantizers: layers (input + weight) and op sites (add/cat "
                                           "inputs); later rules override earlier ones per module"]),
        Section("share", quant.share, why=["quantizers that must carry one scale (TensorRT: no reformat at a "
                                           "concat/add; libspconv: int8 from producer to reader)"]),
        Section("disable", quant.disable, why=["suggested full-precision layers (NVIDIA's defaults); remove an entry "
                                               "to quantize it, or let `recipe sensitivity` decide"]),
        Section("calibration", value={"method": "mse", "batches": count},
                why=[f"mse amax over the histograms of {count} calibration batch(es) (the base recipe's method)"]),
        Section("export", exports, why=["one artifact per part, each verified against PyTorch when `recipe run` "
                                        "writes it"]),
    ]
    return sections, fusions.notes + quant.notes, sum(e.count for e in fusions.entries)


def _offending(exc: RecipeError, sections: list[Section]) -> Entry | None:
    """The drafted entry a plan error is about (``export[1]...``), counting only live entries."""
    text = exc.diagnostics[0].message if exc.diagnostics else exc.headline
    match = _ENTRY_KEY.match(text)
    if match is None:
        return None
    section = next(s for s in sections if s.key == match[1])
    live = [e for e in section.entries if e.commented is None]
    index = int(match[2])
    return live[index] if index < len(live) else None


def _comment_out(entry: Entry, reason: str, sections: list[Section]) -> None:
    entry.commented = reason
    path = entry.value.get("path") if isinstance(entry.value, dict) else None
    for section in sections:
        for other in section.entries:
            if other.commented is None and path and other.extra.get("source") == path:
                other.commented = f"left out: its source {path} is left out"


def _short_reason(exc: RecipeError) -> str:
    """The error without its key, first line only, at most ~240 characters."""
    text = (exc.diagnostics[0].message if exc.diagnostics else exc.headline).split(": ", 1)[-1]
    text = text.splitlines()[0] if text else text
    return text if len(text) <= 240 else text[:237].rsplit(" ", 1)[0] + " ..."


def draft_recipe(loaded: LoadedRecipe, out: str | Path, name: str | None = None) -> DraftResult:
    """Write the draft for ``loaded``'s model and data to ``out``; it passes ``recipe plan``."""
    from ..pipeline import plan_recipe

    out = Path(out)
    sections, notes, expected = _sections(loaded)
    top = _top(loaded, _name(loaded, name))
    header = [f"Draft INT8 recipe written by `recipe init` from one traced batch of {loaded.spec.model.factory}.",
              f"It extends {BASE} (descriptors `act`: per-tensor histogram, `w_channel`: per-channel max; mse amax). "
              "Every entry says why it is there: review them, then `recipe plan` this file and `recipe run` it."]
    result = DraftResult(out, sections, notes, expected_fusions=expected)
    previous = out.read_bytes() if out.is_file() else None  # --force: put it back if no draft passes
    try:
        for _ in range(MAX_REPAIRS):
            atomic_write_text(out, render(header, top, sections))
            draft = load_recipe(out)
            try:
                result.plan = plan_recipe(draft)
                return result
            except RecipeError as exc:
                entry = _offending(exc, sections)
                if entry is None:
                    raise RecipeError(f"{out}: the draft does not pass `recipe plan` (please report it): "
                                      f"{exc.format()}") from None
                reason = _short_reason(exc)
                _comment_out(entry, f"left out: `recipe plan` says {reason}", sections)
                result.repaired.append(reason)
        raise RecipeError(f"{out}: the draft still fails `recipe plan` after {MAX_REPAIRS} corrections")
    except BaseException:  # no half-written draft: the file is as it was before `recipe init`
        if previous is None:
            out.unlink(missing_ok=True)
        else:
            atomic_write_bytes(out, previous)
        raise


__all__ = ["DraftResult", "draft_recipe"]
