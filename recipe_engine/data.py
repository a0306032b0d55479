"""Model and data construction from a recipe's ``model:`` and ``data:`` sections."""

from __future__ import annotations

import difflib
import inspect
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .recipe.errors import RecipeError
from .recipe.loader import LoadedRecipe
from .recipe.schema import FactoryRef
from .util.imports import import_callable
from .util.usercode import call_user, located

DEFAULT_FORWARD_HINT = ("without data.forward a batch is passed as model(**batch) when it is a dict, model(*batch) when it "
                        "is a tuple or list (a DataLoader's (inputs, labels) becomes model(inputs, labels)), else "
                        "model(batch); set data.forward to your own `def forward(model, batch): return {call}` "
                        "(recipe init: --forward MODULE:CALLABLE)")


def default_forward(model: nn.Module, batch: Any) -> Any:
    """model(**batch) for dicts, model(*batch) for tuples/lists, model(batch) otherwise.

    A batch that does not fit ``model.forward``'s parameters is a RecipeError saying how the batch
    was passed and that ``data.forward`` is the fix (an error inside the model is left alone).
    """
    try:
        if isinstance(batch, dict):
            return model(**batch)
        if isinstance(batch, (tuple, list)):
            return model(*batch)
        return model(batch)
    except TypeError as exc:
        if not _forward_signature_mismatch(exc):
            raise
        shape = ("a dict with keys " + ", ".join(map(str, list(batch)[:6])) if isinstance(batch, dict) else
                 f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else
                 f"a {type(batch).__name__}")
        call = "model(dict(batch))" if isinstance(batch, dict) else "model(batch[0])"  # a batch_dict model / (x, y)
        raise RecipeError(f"model(batch) raised TypeError: {exc} (the batch is {shape})",
                          hint=DEFAULT_FORWARD_HINT.format(call=call)) from None


def _forward_signature_mismatch(exc: TypeError) -> bool:
    """True when calling the module failed on its parameters (not a TypeError raised inside forward)."""
    frames = traceback.extract_tb(exc.__traceback__)
    innermost = frames[-1].filename.replace("\\", "/") if frames else ""
    return innermost.endswith("torch/nn/modules/module.py") and re.search(r"forward\(\) (takes|got|missing)",
                                                                          str(exc)) is not None


def _import(loaded: LoadedRecipe, key: tuple, reference: str, what: str) -> Callable:
    try:
        return import_callable(reference, what=what)
    except RecipeError as exc:
        raise loaded.error(key, exc.headline.removeprefix(f"{what} "), hint=exc.hint) from exc


def build_model(loaded: LoadedRecipe) -> nn.Module:
    """Build the FP32 model from ``model.factory`` and load ``model.checkpoint`` (weights only)."""
    section = loaded.spec.model
    if section is None:
        raise loaded.error(("model",), "this recipe has no `model:` section",
                           hint="add model: {factory: package.module:build}")
    factory = _import(loaded, ("model", "factory"), section.factory, "model.factory")
    try:
        model = factory(**section.kwargs)
    except TypeError as exc:
        if not _rejected_kwargs(exc):
            raise located(loaded, ("model", "factory"), exc, section.factory) from exc
        raise loaded.error(("model", "kwargs"), f"{section.factory} rejected its kwargs: {exc}",
                           hint=kwargs_hint(factory, section.kwargs)) from None
    except Exception as exc:  # noqa: BLE001 - the user's factory may raise anything
        raise located(loaded, ("model", "factory"), exc, section.factory) from exc
    if not isinstance(model, nn.Module):
        raise loaded.error(("model", "factory"), f"{section.factory} returned {type(model).__name__}, not an nn.Module")
    if section.checkpoint:
        load_checkpoint_into(loaded, model)
    model.eval()
    return model


def kwargs_hint(fn: Callable, kwargs: Mapping) -> str | None:
    """``did you mean`` for keyword arguments ``fn`` does not take, and the ones it does."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    names = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in names]
    close = [f"{m[0]!r} for {k!r}" for k in unknown if (m := difflib.get_close_matches(str(k), names, n=1))]
    takes = f"it takes: {', '.join(names)}" if names else "it takes no keyword arguments"
    return (f"did you mean {', '.join(close)}? " if close else "") + takes


def _rejected_kwargs(exc: TypeError) -> bool:
    """True for the TypeError of a call with wrong keyword arguments (not one raised inside the callee)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return len(frames) <= 1 and ("argument" in str(exc))


def load_checkpoint_into(loaded: LoadedRecipe, model: nn.Module) -> None:
    """Load ``model.checkpoint`` (weights only, ``checkpoint_key``, ``strict``) with located errors."""
    section = loaded.spec.model
    key = ("model", "checkpoint")
    path = loaded.resolve_path(section.checkpoint, "model", "checkpoint")
    if not path.is_file():
        raise loaded.error(key, f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors are the file's fault
        raise loaded.error(key, f"cannot load {path} with weights_only=True: {exc}",
                           hint="save checkpoints as plain state dicts (tensors, dicts, numbers)") from None
    if section.checkpoint_key:
        if not isinstance(state, dict) or section.checkpoint_key not in state:
            keys = ", ".join(sorted(map(str, state))[:12]) if isinstance(state, dict) else type(state).__name__
            raise loaded.error(("model", "checkpoint_key"), f"{path} has no key {section.checkpoint_key!r}",
                               hint=f"its top-level keys: {keys}")
        state = state[section.checkpoint_key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = [k for k, v in state.items() if isinstance(v, dict)] if isinstance(state, dict) else []
        hint = (f"set model.checkpoint_key to one of: {', '.join(map(str, nested))}" if nested
                else "a checkpoint is a state dict: {parameter name: tensor}")
        raise loaded.error(key, f"{path} holds a {type(state).__name__}, not a state dict", hint=hint)
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items()
                  if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} tensor(s) of another shape: {_few(mismatched)}")
    if section.strict and missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if section.strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if problems:
        raise loaded.error(key, f"{path} does not fit the model: " + "; ".join(problems),
                           hint="check model.kwargs against the checkpoint, or set model.strict: false to load the "
                                "matching keys only" if not mismatched else "check model.kwargs against the checkpoint")
    model.load_state_dict(state, strict=section.strict)


def _few(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f", ... (+{len(items) - limit})" if len(items) > limit else "")


def make_data(loaded: LoadedRecipe, split: str) -> Any:
    """Call the data factory of ``data.<split>`` (calibration, validation, train)."""
    section = loaded.spec.data
    if section is None:
        raise loaded.error(("data",), "this recipe has no `data:` section",
                           hint="add data: {calibration: {factory: package.module:make_batches}}")
    ref: FactoryRef | None = getattr(section, split)
    key_split = split
    if ref is None:
        if split == "validation":
            ref, key_split = section.calibration, "calibration"
        else:
            raise loaded.error(("data", split), f"data.{split} is not set")
    key = ("data", key_split, "factory")
    factory = _import(loaded, key, ref.factory, f"data.{key_split}.factory")
    try:
        batches = factory(**ref.kwargs)
    except TypeError as exc:
        if not _rejected_kwargs(exc):
            raise located(loaded, key, exc, ref.factory) from exc
        raise loaded.error(("data", key_split, "kwargs"), f"{ref.factory} rejected its kwargs: {exc}",
                           hint=kwargs_hint(factory, ref.kwargs)) from None
    except Exception as exc:  # noqa: BLE001 - the user's factory may raise anything
        raise located(loaded, key, exc, ref.factory) from exc
    problem = batches_problem(batches, reread=split != "train")
    if problem:
        message, hint = problem
        raise loaded.error(key, f"{ref.factory} returned {message}", hint=hint)
    return batches


def batches_problem(batches: Any, reread: bool = True) -> tuple[str, str] | None:
    """(what is wrong, hint) when ``batches`` cannot serve as a list of batches, else None.

    The engine reads calibration and evaluation data several times (op-site discovery, calibration,
    layer SQNR, export captures), so ``reread`` refuses one-shot iterators (a generator would be
    used up by the first pass and the later ones would silently see fewer batches, or none).
    """
    example = "a list `[batch0, batch1, ...]` or a torch DataLoader"
    if batches is None:
        return "None, not a list of batches", f"give the batches as {example}"
    if isinstance(batches, Mapping):
        return ("a dict (one batch?); expected a list of batches (iterating a dict gives its keys)",
                "wrap a single batch in a list: `[batch]`")
    if isinstance(batches, torch.Tensor):
        return ("a Tensor (one batch?); expected a list of batches (iterating a tensor gives its rows)",
                "wrap a single batch in a list: `[batch]`")
    iterable = hasattr(type(batches), "__iter__") or hasattr(type(batches), "__getitem__")
    if isinstance(batches, (str, bytes)) or not iterable:
        return f"a {type(batches).__name__}, which is not a list of batches", f"give the batches as {example}"
    if reread and isinstance(batches, Iterator):
        return (f"a {type(batches).__name__}, which can be read only once; the engine reads the batches several "
                "times (op sites, calibration, layer SQNR, exports)",
                "use a list (`list(...)`) or a re-iterable object such as a torch DataLoader")
    if reread and _length(batches) == 0:
        return "an empty sequence (no batches)", f"give at least one batch, as {example}"
    return None


def _length(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:  # no __len__, or a DataLoader over an IterableDataset
        return None


def forward_fn(loaded: LoadedRecipe) -> Callable[[nn.Module, Any], Any]:
    """The recipe's ``data.forward`` (default: ``model(**batch)``-style); its errors are located."""
    section = loaded.spec.data
    if section is None or section.forward is None:
        key, what, forward = (("data", "calibration") if section else ("model",)), "model(batch)", default_forward
    else:
        key, what = ("data", "forward"), section.forward
        forward = _import(loaded, key, section.forward, "data.forward")

    def run(model: nn.Module, batch: Any) -> Any:
        return call_user(loaded, key, what, forward, model, batch)

    return run


def evaluate_fn(loaded: LoadedRecipe) -> Callable[[nn.Module, Any], dict] | None:
    """The recipe's ``data.evaluate``; errors and results that are not a dict of numbers are located."""
    section = loaded.spec.data
    if section is None or section.evaluate is None:
        return None
    key, what = ("data", "evaluate"), section.evaluate
    evaluate = _import(loaded, key, section.evaluate, "data.evaluate")

    def run(model: nn.Module, batches: Any) -> dict[str, float]:
        result = call_user(loaded, key, what, evaluate, model, batches)
        if not isinstance(result, Mapping):
            raise loaded.error(key, f"{what} returned {type(result).__name__}; expected a dict of numbers like "
                               "{'mAP': 61.2}")
        try:
            return {str(k): float(v) for k, v in result.items()}
        except (TypeError, ValueError) as exc:
            raise loaded.error(key, f"{what} returned a value that is not a number: {exc}",
                               hint="return a dict of numbers like {'mAP': 61.2}") from None

    return run


def run_evaluate(evaluate: Callable, model: nn.Module, batches: Any) -> dict[str, float]:
    """Evaluate in eval mode without gradients; check the result is a dict of numbers."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = evaluate(model, batches)
    finally:
        model.train(was_training)
    if not isinstance(result, Mapping):
        raise RecipeError(f"data.evaluate returned {type(result).__name__}; expected a dict like {{'mAP': 61.2}}")
    return {str(k): float(v) for k, v in result.items()}


class _RecipeData:
    """The recipe's ``data.calibration`` batches, built on first use (many calls never need them)."""

    def __init__(self, loaded: LoadedRecipe):
        self.loaded = loaded
        self.data: Any = None

    def __iter__(self):
        if self.data is None:
            self.data = make_data(self.loaded, "calibration")
        return iter(self.data)


def recipe_forward(loaded: LoadedRecipe, forward: Callable | None = None) -> Callable:
    """``forward`` if given, else the recipe's ``data.forward`` (else ``model(**batch)``-style)."""
    return forward or forward_fn(loaded)


def recipe_batches(loaded: LoadedRecipe, batches: Iterable | None = None, reread: bool = True) -> Iterable | None:
    """``batches`` if given (checked: a list of batches, re-iterable when ``reread``), else the recipe's
    calibration data (None when the recipe has none)."""
    if batches is not None:
        problem = batches_problem(batches, reread)
        if problem:
            message, hint = problem
            raise RecipeError(f"batches= is {message}", hint=hint)
        return batches
    if loaded.spec.data is None or loaded.spec.data.calibration is None:
        return None
    return _RecipeData(loaded)
