"""Amax methods by name: how a quantizer's collected statistics become its amax.

A method is a function ``fn(stats, num_bits, unsigned, settings) -> torch.Tensor`` where ``stats``
is what a backend returns from ``statistics(quantizer)`` (``{"amax"}`` for a max calibrator,
``{"hist", "edges"}`` for a histogram) and ``settings`` the recipe's ``calibration`` section. A
method may own a settings model (a :class:`~.settings.MethodSettings`): its fields become keys of
``calibration:`` (and of ``schemas/recipe.schema.json``); the method's name becomes a value
``calibration.method`` and a quantizer's ``method`` accept. Built-ins register exactly as an
extension does::

    from pydantic import Field
    from recipe_engine.calib import methods
    from recipe_engine.calib.settings import MethodSettings

    class TrimSettings(MethodSettings):
        trim: float = Field(0.5, gt=0, le=1, title="Fraction of the max")

    @methods.register("trimmed-max", needs_histogram=False, settings=TrimSettings)
    def trimmed_max(stats, num_bits, unsigned, settings):
        return methods.amax_from_statistics(stats, "max") * settings.trim

``fn`` may be ``"package.module:function"`` (imported on first use), so that this registry, which
the recipe schema reads, stays free of torch. Every backend goes through these functions, so two
backends given the same data give the same amax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import Registry, resolve
from .settings import PercentileSettings, SearchSettings

AmaxFn = Callable[[dict, int, bool, Any], Any]


@dataclass(frozen=True)
class AmaxMethod:
    name: str
    fn: Any  # AmaxFn or "module:function"
    needs_histogram: bool
    settings: type | None = None  # a MethodSettings subclass: its keys in `calibration:`

    def function(self) -> AmaxFn:
        return resolve(self.fn)


METHODS: Registry[AmaxMethod] = Registry("calibration method", "recipe_engine.calib.methods.register(name, fn)")


def register(name: str, fn: AmaxFn | str | None = None, *, needs_histogram: bool = True,
             settings: type | None = None):
    """Register ``fn`` as amax method ``name`` (also a decorator). ``needs_histogram=False``: it also
    accepts a max calibrator's ``{"amax"}`` statistics. ``settings``: its keys in ``calibration:``."""
    def decorate(func: AmaxFn | str) -> AmaxFn | str:
        METHODS.add(name, AmaxMethod(name, func, needs_histogram, settings))
        return func

    return decorate(fn) if fn is not None else decorate


def unregister(name: str) -> None:
    METHODS.remove(name)


def lookup(name: str) -> AmaxMethod | None:
    return METHODS.lookup(name)


def registered() -> list[str]:
    return METHODS.names()


def amax_from_statistics(stats: dict | None, method: str, num_bits: int = 8, unsigned: bool = False,
                         settings: Any = None) -> Any:
    """Amax of ``stats`` by the registered ``method``; raises ``ValueError`` with the known names."""
    from .amax_search import EmptyCalibratorError

    entry = METHODS.lookup(method)
    if entry is None:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {registered()}")
    if stats is None:
        raise EmptyCalibratorError("the calibrator has collected no data")
    if entry.needs_histogram and "hist" not in stats:
        raise ValueError(f"calibration method {method!r} needs a histogram calibrator (calibrator: histogram)")
    return entry.function()(stats, num_bits, unsigned, settings)


def histogram_of(stats: dict | None) -> Any:
    """``(counts, edges)`` of histogram statistics (see :func:`.amax_methods.histogram_of`)."""
    from .amax_methods import histogram_of as read

    return read(stats)


def percentile_of(stats: dict, percentile: float) -> Any:
    """The ``percentile`` amax of histogram statistics."""
    from .amax_methods import percentile_of as search

    return search(stats, percentile)


# Built-ins, registered the same way as an extension's methods.
register("max", "recipe_engine.calib.amax_methods:max_amax", needs_histogram=False)
register("entropy", "recipe_engine.calib.amax_methods:entropy", settings=SearchSettings)
register("mse", "recipe_engine.calib.amax_methods:mse", settings=SearchSettings)
register("percentile", "recipe_engine.calib.amax_methods:percentile", settings=PercentileSettings)
