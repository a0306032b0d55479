"""Exportability checked before calibration: trace every ``export:`` entry's module on one batch.

``recipe plan`` and the start of ``recipe run`` call :func:`check_exports`, so a module the
exporter cannot express fails in seconds, located at its entry, instead of after calibration.
Per entry, with every quantizer off (calibration has not run yet) and ``before_export`` fusions
applied (on a copy of the model when the caller still needs the original, as ``recipe run`` does):

- the module path exists (``export[i].module``);
- its inputs from the first calibration batch are captured; a call with dicts needs
  ``inputs``/``outputs`` (:mod:`.calls`), and the module may read no tensor the mapping misses;
- ``onnx-qdq``: torch.onnx.export (TorchScript) of the module, without writing a file;
- ``onnx-sparse``: the sparse trace (only spconv convs, +, relu, .dense(), permute, reshape) and
  its int8 chain (:func:`.scn_precision.check_trace`: an int8 layer that would read fp16 is an
  error unless the entry sets ``allow_fp16_to_int8``); it needs only which quantizers are
  enabled and shared, so the recipe's ``disable`` list is applied to the copy first;
- ``tensorrt``: its ``source`` is an earlier ``onnx-qdq`` entry.

Nothing is verified numerically here; that is the export step's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..quant import backend
from ..quant.apply import disable_matching, get_state
from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe
from . import formats
from .calls import check_reads, wrap_call
from .capture import capture, find_module
from .quantizers import quantizers_off
from .scn_precision import check_trace
from .settings import OnnxQdqExport, OnnxSparseExport


def check_exports(model: nn.Module, loaded: LoadedRecipe, batches: Iterable | None,
                  forward: Callable[[nn.Module, Any], Any]) -> int:
    """Trace every export entry's module on the first batch; returns how many were traced.

    ``model`` went through ``apply`` (fusion + quantizers, not calibrated) so that the traced
    module is the one the export will see; it is changed here (``before_export`` fusions, the
    ``disable`` list), so a caller that still needs it passes a copy (``recipe run`` does).
    Each entry is checked by its format's ``precheck`` (:mod:`.formats`); formats that capture no
    module call (``tensorrt``) are skipped. Raises a RecipeError located at the failing entry.
    """
    spec = loaded.spec
    if not spec.export or batches is None:
        return 0
    kinds = [formats.get(e.format) for e in spec.export]
    traced_entries = [(i, e, k) for i, (e, k) in enumerate(zip(spec.export, kinds, strict=True)) if k.capture]
    for index, entry, _ in traced_entries:
        try:
            find_module(model, entry.module)
        except RecipeError as exc:
            raise loaded.error(("export", index, "module"), exc.headline, hint=exc.hint) from None
    from .runner import fuse_before_export

    fuse_before_export(model, loaded)
    state = get_state(model)
    with loaded.located():
        disable_matching(state, spec.disable)  # precisions follow what stays enabled after calibration
    _check_fp8_opset(loaded, state, traced_entries)
    later = []
    paths = [e.module or "" for _, e, _ in traced_entries]
    with quantizers_off(state):
        try:
            captured = capture(model, batches, forward, paths, count_batches=1)
        except RecipeError as exc:
            if exc.diagnostics:  # already located (the user's forward or data raised): keep its key
                raise
            raise loaded.error(("export",), exc.headline, hint=exc.hint) from None
        traced = 0
        for index, entry, kind in traced_entries:
            call = captured.inputs[entry.module or ""]
            module = find_module(model, entry.module)
            try:
                finish = _precheck(kind, module, entry, call.args, call.kwargs)
            except RecipeError as exc:
                key = ("export", index, getattr(exc, "entry_key", "module"))
                raise loaded.error(key, f"{entry.path}: not exportable: {exc.headline}", hint=exc.hint) from None
            if finish is not None:
                later.append((index, entry, finish))
            traced += 1
    names_of = {id(q): names for names, q in state.unique()}
    for index, entry, finish in later:  # with the quantizers' own enabled state restored
        try:
            finish(names_of)
        except RecipeError as exc:
            raise loaded.error(("export", index), f"{entry.path}: {exc.headline}", hint=exc.hint) from None
    return traced


FP8_MIN_OPSET = 19  # FLOAT8E4M3FN QuantizeLinear/DequantizeLinear


def _check_fp8_opset(loaded: LoadedRecipe, state: Any, traced_entries: list) -> None:
    """An ``onnx-qdq`` entry below opset 19 whose module holds enabled FP8 quantizers fails now, not after calibration."""
    for index, entry, _ in traced_entries:
        if not isinstance(entry, OnnxQdqExport) or entry.opset >= FP8_MIN_OPSET:
            continue
        root = entry.module or ""
        fp8 = [name for name, q in state.quantizers.items()
               if (not root or state.owners.get(name, "") == root or state.owners.get(name, "").startswith(root + "."))
               and backend.is_enabled(q) and backend.describe(q).get("format", "int") != "int"]
        if fp8:
            shown = ", ".join(fp8[:3]) + (f" (+{len(fp8) - 3})" if len(fp8) > 3 else "")
            raise loaded.error(("export", index, "opset"),
                               f"{entry.path}: FP8 (format: fp8_e4m3) quantizers ({shown}) need ONNX opset >= "
                               f"{FP8_MIN_OPSET} for FLOAT8E4M3FN Q/DQ; this export uses opset {entry.opset}",
                               hint=f"set `opset: {FP8_MIN_OPSET}` in this export entry")


def _precheck(kind: formats.ExportFormat, module: nn.Module, entry: Any, args: tuple, kwargs: dict) -> Any:
    """Run the format's precheck on the module (eval mode); returns its follow-up check or None."""
    check = kind.prechecker()
    if check is None:
        return None
    was_training = module.training
    module.eval()
    try:
        return check(module, entry, args, kwargs)
    finally:
        module.train(was_training)


def precheck_qdq(module: nn.Module, entry: OnnxQdqExport, args: tuple, kwargs: dict) -> None:
    """``onnx-qdq``: torch.onnx.export (TorchScript) of the module, without writing a file."""
    from .onnx_qdq import export_qdq

    runner, run_args, run_kwargs = wrap_call(module, args, kwargs, entry)
    export_qdq(runner, run_args, run_kwargs, entry.opset, False, entry.dynamic_axes)
    check_reads(runner)


def precheck_sparse(module: nn.Module, entry: OnnxSparseExport, args: tuple, kwargs: dict) -> Callable:
    """``onnx-sparse``: the sparse trace now, its int8 chain once the quantizers' enabled state is back."""
    from .sparse_trace import trace_sparse

    runner, run_args, run_kwargs = wrap_call(module, args, kwargs, entry)
    trace = trace_sparse(module, entry.module or "", run_args, run_kwargs, runner=runner)
    check_reads(runner)
    return lambda names_of: check_trace(trace, names_of, entry.allow_fp16_to_int8)
