"""PTQ steps by name: ``register(name, settings_model)(fn)``, as the other registries of the engine.

A step is ``fn(context, settings) -> dict`` (a JSON-able summary) where ``context`` is a
:class:`recipe_engine.ptq.context.PtqContext` and ``settings`` an instance of ``settings_model``
(a pydantic model with ``step: Literal[name]``). The built-ins register exactly as an extension
does, from their own modules (imported on first lookup)::

    from recipe_engine import ptq

    @ptq.register("my_step", MyStepSettings)
    def my_step(context, settings):
        ...
        return {"layers": 3}

The recipe schema lists the built-in steps (``ptq/settings.py``); a registered extension step is
run from Python (``recipe_engine.ptq.run(model, [MyStepSettings(step="my_step")], batches)``).
This module stays free of torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

StepFn = Callable[[Any, Any], dict]


@dataclass(frozen=True)
class PtqStepEntry:
    name: str
    settings: type[BaseModel]
    fn: StepFn


_REGISTRY: dict[str, PtqStepEntry] = {}
# built-in step -> the module that registers it (imported on first lookup, so the registry imports no torch)
_BUILTINS = {
    "bias_correction": "recipe_engine.ptq.bias_correction",
    "cle": "recipe_engine.ptq.cle",
    "adaround": "recipe_engine.ptq.adaround",
    "brecq": "recipe_engine.ptq.brecq",
    "range_search": "recipe_engine.ptq.range_search",
}


def register(name: str, settings: type[BaseModel]) -> Callable[[StepFn], StepFn]:
    """Decorator: register ``fn`` as PTQ step ``name`` whose settings are ``settings``."""
    if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
        raise TypeError(f"ptq step {name!r}: settings must be a pydantic model class")
    field = settings.model_fields.get("step")
    if field is None or getattr(field.annotation, "__args__", None) != (name,):
        raise TypeError(f"ptq step {name!r}: its settings model needs a field `step: Literal[{name!r}]`")

    def decorate(fn: StepFn) -> StepFn:
        _REGISTRY[name] = PtqStepEntry(name, settings, fn)
        return fn

    return decorate


def lookup(name: str) -> PtqStepEntry | None:
    if name not in _REGISTRY and name in _BUILTINS:
        importlib.import_module(_BUILTINS[name])
    return _REGISTRY.get(name)


def registered() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTINS))
