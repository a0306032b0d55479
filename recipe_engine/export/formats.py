"""Export formats by name: each one's settings model (its ``export:`` entry) and how it runs.

A format is a settings model (a subclass of :class:`~.settings.base.ExportBase` whose ``format``
field is ``Literal[NAME]``), a ``run(ctx, entry) -> dict`` function that writes and verifies
one artifact, and what the export step captures for it before running. The recipe schema's
``export:`` list is the discriminated union (on ``format``) of every registered settings model,
rebuilt when a format registers; ``schemas/recipe.schema.json`` is generated from it.

Built-ins (:mod:`.settings`) register exactly as an extension does::

    from typing import Literal
    from pydantic import Field
    from recipe_engine.export import formats
    from recipe_engine.export.settings import ExportBase

    class NpzExport(ExportBase):
        format: Literal["npz"] = Field(title="Format")

    @formats.register("npz", NpzExport, capture=None)
    def run_npz(ctx, entry):          # ctx: ExportContext
        ...
        return {**ctx.base(entry), "arrays": 3}

``run`` (and ``precheck``) may be given as ``"package.module:function"``, imported when a recipe
uses the format, so registering one never imports torch.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..registry import Registry, resolve

Capture = Literal["inputs", "sparse"] | None


@dataclass(frozen=True)
class ExportFormat:
    name: str
    settings: type  # an ExportBase subclass with ``format: Literal[name]``
    run: Any  # run(ctx, entry) -> dict, or "module:function"
    capture: Capture = "inputs"  # "inputs": the module's call; "sparse": also its point counts; None: nothing
    precheck: Any = None  # precheck(module, entry, args, kwargs) -> None | (names_of -> None), before calibration

    def runner(self) -> Callable[[ExportContext, Any], dict]:
        return resolve(self.run)

    def prechecker(self) -> Callable | None:
        return resolve(self.precheck) if self.precheck is not None else None


@dataclass
class ExportContext:
    """What a format's ``run`` gets besides its entry: the model, the recipe, the captured calls, the run dir."""

    model: Any  # the quantized, calibrated nn.Module
    loaded: Any  # LoadedRecipe
    captured: Any  # capture.CaptureResult: inputs per module path, point counts of sparse modules
    out: Path  # the run directory (write with export.artifact.save_onnx / save_json)
    state: Any  # quant.apply state (quantizer names)
    shared: dict[str, Any] = field(default_factory=dict)  # per export step, e.g. onnx-qdq results tensorrt reads

    def base(self, entry: Any) -> dict[str, Any]:
        """The keys every result has: path, format, module, status."""
        return {"path": entry.path, "format": entry.format, "module": entry.module or None, "status": "ok"}


FORMATS: Registry[ExportFormat] = Registry("export format", "recipe_engine.export.formats.register(name, Settings, "
                                                            "run)")


def register(name: str, settings: type, run: Any = None, *, capture: Capture = "inputs", precheck: Any = None):
    """Register export format ``name`` (also a decorator over ``run``); replaces an earlier one."""
    literal = getattr(settings, "model_fields", {}).get("format")
    if literal is None or typing.get_args(literal.annotation) != (name,):
        raise TypeError(f"export format {name!r}: {getattr(settings, '__name__', settings)} needs the field "
                        f"format: Literal[{name!r}] (the recipe's `format:` picks the settings model by it)")

    def decorate(fn: Any) -> Any:
        FORMATS.add(name, ExportFormat(name, settings, fn, capture, precheck))
        return fn

    return decorate(run) if run is not None else decorate


def get(name: str) -> ExportFormat:
    return FORMATS.get(name)


def registered() -> list[str]:
    return FORMATS.names()


def unregister(name: str) -> None:
    FORMATS.remove(name)
