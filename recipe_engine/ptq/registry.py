"""PTQ steps by name (a :class:`recipe_engine.registry.Registry`), as the other kinds of the engine.

A step is a settings model (a pydantic model whose ``step`` field is ``Literal[NAME]``; its entry of a
recipe's ``ptq:`` list) and a function ``fn(context, settings) -> dict`` (a JSON-able record) where
``context`` is a :class:`recipe_engine.ptq.context.PtqContext`. The recipe schema's ``ptq:`` list is
the discriminated union (on ``step``) of every registered settings model, rebuilt when a step
registers. Built-ins register exactly as an extension does (their functions named as
``"module:function"``, imported when a recipe runs them, so that registering imports no torch)::

    from typing import Literal
    from recipe_engine import ptq
    from recipe_engine.ptq.settings import StepSettings

    class MyStep(StepSettings):
        step: Literal["my_step"]

    @ptq.register("my_step", MyStep)
    def my_step(context, settings):
        ...
        return {"layers": 3}
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import Registry, resolve
from . import settings as builtin

StepFn = Callable[[Any, Any], dict]


@dataclass(frozen=True)
class PtqStepEntry:
    name: str
    settings: type  # a pydantic model with ``step: Literal[name]``
    fn: Any  # fn(context, settings) -> dict, or "module:function"

    def runner(self) -> StepFn:
        return resolve(self.fn)


STEPS: Registry[PtqStepEntry] = Registry("PTQ step", "recipe_engine.ptq.register(name, Settings, fn)")


def register(name: str, settings: type, fn: Any = None):
    """Register PTQ step ``name`` (also a decorator over ``fn``); replaces an earlier one."""
    field = getattr(settings, "model_fields", {}).get("step")
    if field is None or typing.get_args(field.annotation) != (name,):
        raise TypeError(f"PTQ step {name!r}: {getattr(settings, '__name__', settings)} needs the field "
                        f"step: Literal[{name!r}] (the recipe's `step:` picks the settings model by it)")

    def decorate(func: Any) -> Any:
        STEPS.add(name, PtqStepEntry(name, settings, func))
        return func

    return decorate(fn) if fn is not None else decorate


def lookup(name: str) -> PtqStepEntry | None:
    return STEPS.lookup(name)


def registered() -> list[str]:
    return STEPS.names()


def unregister(name: str) -> None:
    STEPS.remove(name)


register("bias_correction", builtin.BiasCorrectionStep, "recipe_engine.ptq.bias_correction:bias_correction")
register("cle", builtin.CleStep, "recipe_engine.ptq.cle:cle")
register("adaround", builtin.AdaRoundStep, "recipe_engine.ptq.adaround:adaround")
register("brecq", builtin.BrecqStep, "recipe_engine.ptq.brecq:brecq")
register("range_search", builtin.RangeSearchStep, "recipe_engine.ptq.range_search:range_search")
register("smooth", builtin.SmoothStep, "recipe_engine.ptq.smooth:smooth")
