"""``model.pt``: what a run saves (weights, amax, op sites, disabled set, the recipe lock) and how it is
read back without importing or calling anything the file names.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable

import torch
from torch import nn

from . import backends
from . import data as data_mod
from .application import apply_loaded
from .ptq.input_scale import restore as restore_input_scales
from .quant import backend
from .quant.apply import get_state
from .recipe.errors import Diagnostic, Position, RecipeError
from .recipe.loader import LoadedRecipe, as_loaded, load_recipe
from .recipe.lock import lock_text
from .recipe.schema import Recipe
from .util.atomic import atomic_save
from .util.imports import imports_refused

MODEL_FILE_FORMAT = "recipe-engine/model/1"


def save_quantized(model: nn.Module, path: str | os.PathLike, recipe: LoadedRecipe | Recipe) -> None:
    """Write ``model.pt``: state dict with amax buffers, op sites, disabled set and the recipe lock."""
    loaded = as_loaded(recipe)
    state = get_state(model)
    payload = {
        "format": MODEL_FILE_FORMAT,
        "lock": lock_text(loaded.spec),
        "sha256": loaded.sha256,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "op_sites": state.op_sites,
        "disabled": list(state.disabled),
    }
    atomic_save(path, lambda tmp: torch.save(payload, tmp))


def recipe_from_lock(text: str, label: str = "<saved recipe lock>") -> LoadedRecipe:
    """The recipe lock stored in a model file; its positions (for errors) name ``label``, not a temp file."""
    with tempfile.NamedTemporaryFile("w", suffix=".lock.yaml", delete=False) as handle:
        handle.write(text)
    try:
        try:
            loaded = load_recipe(handle.name)
        except RecipeError as exc:
            raise RecipeError(diagnostics=[_relabel_diagnostic(d, handle.name, label) for d in exc.diagnostics],
                              message=None if exc.diagnostics else exc.headline, hint=exc.hint) from None
    finally:
        os.unlink(handle.name)
    loaded.positions = {key: _relabel(pos, handle.name, label) for key, pos in loaded.positions.items()}
    return loaded


def _relabel(position: Position, temp: str, label: str) -> Position:
    return Position(label, position.line, position.col) if position.file == temp else position


def _relabel_diagnostic(diagnostic: Diagnostic, temp: str, label: str) -> Diagnostic:
    return Diagnostic(_relabel(diagnostic.position, temp, label), diagnostic.message, diagnostic.hint)


def read_model_file(path: str | os.PathLike) -> dict:
    """The payload of a ``model.pt`` (tensors and strings only: ``weights_only=True``), format checked."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is the file's fault
        raise RecipeError(f"{path}: cannot read it with weights_only=True: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise RecipeError(f"{path}: not a recipe-engine model file (format {MODEL_FILE_FORMAT})")
    return payload


def load_quantized(path: str | os.PathLike, model: nn.Module | None = None, *,
                   factory: Callable[[], nn.Module] | None = None, trust_recipe: bool = False) -> nn.Module:
    """Rebuild a quantized model from ``model.pt`` without calibrating and without a GPU.

    Loading a file never imports or calls anything the file names: pass the FP32 model (``model=``)
    or a callable that builds it (``factory=``). The recipe lock inside the file is re-applied to it
    (fusions, quantizers, share groups), then the saved weights and amax values are loaded. The
    lock's selector and fusion types may only name modules that are already imported (your model's
    own classes are) or the engine's own packages; any other module is refused, not imported.
    ``trust_recipe=True`` lifts both rules for a file you trust: the model is built by calling the
    lock's ``model.factory`` and the lock may import what it names; what it will import is logged first.
    """
    payload = read_model_file(path)
    loaded = recipe_from_lock(payload["lock"], f"{path} (its recipe lock)")
    spec = loaded.spec
    if trust_recipe:
        import logging

        logging.getLogger("recipe_engine").warning(
            "load_quantized(%s, trust_recipe=True) may import and run: %s", path, ", ".join(spec.factories()) or "-")
    if model is None and factory is not None:
        model = factory()
    if model is None:
        if not trust_recipe:
            named = f" (its recipe names model.factory {spec.model.factory})" if spec.model else ""
            raise RecipeError(f"{path}: pass the model to rebuild{named}",
                              hint="load_quantized(path, model=build_my_model()) or factory=build_my_model; "
                                   "trust_recipe=True calls the file's own factory (only for files you trust)")
        if spec.model is None:
            raise RecipeError(f"{path}: the recipe has no model factory; pass model=")
        from .util.imports import import_callable

        model = import_callable(spec.model.factory, what="model.factory")(**spec.model.kwargs)
    if not isinstance(model, nn.Module):
        raise RecipeError(f"{path}: model= must be an nn.Module, got {type(model).__name__}")
    # The backend is the engine's own code: load it (and what its library imports) before the guard.
    backends.get(spec.backend)
    guard = contextlib.nullcontext() if trust_recipe else imports_refused(f"{path}'s recipe")
    try:
        with guard:
            apply_loaded(model, loaded, None, data_mod.default_forward, payload["op_sites"])
    except RecipeError as exc:
        if not exc.diagnostics:
            raise
        hint = (f"load_quantized re-applies {path}'s recipe to the model you pass: pass the FP32 model it was "
                "saved from (same class and kwargs, not yet fused or quantized); `recipe inspect` shows the file's recipe")
        raise RecipeError(diagnostics=[Diagnostic(d.position, d.message) for d in exc.diagnostics], hint=hint) from None
    restore_input_scales(model, payload["state_dict"], str(path))  # the ptq `smooth` step's 1/s buffers
    state = get_state(model)
    backend.load_state_dict(model, payload["state_dict"], strict=True, backend=state.backend)  # amax on CPU
    for name in payload["disabled"]:
        if name in state.quantizers:
            backend.set_enabled(state.quantizers[name], False)
    state.disabled = list(payload["disabled"])
    model.eval()
    return model
