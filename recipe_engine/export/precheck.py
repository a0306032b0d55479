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

from ..quant.apply import disable_matching, get_state
from ..recipe.errors import RecipeError
from ..recipe.loader import LoadedRecipe
from ..recipe.schema import OnnxQdqExport, OnnxSparseExport, TensorRTExport
from .calls import check_reads, wrap_call
from .capture import capture, find_module
from .quantizers import quantizers_off
from .scn_precision import check_trace


def check_exports(model: nn.Module, loaded: LoadedRecipe, batches: Iterable | None,
                  forward: Callable[[nn.Module, Any], Any]) -> int:
    """Trace every export entry's module on the first batch; returns how many were traced.

    ``model`` went through ``apply`` (fusion + quantizers, not calibrated) so that the traced
    module is the one the export will see; it is changed here (``before_export`` fusions, the
    ``disable`` list), so a caller that still needs it passes a copy (``recipe run`` does).
    Raises a RecipeError located at the failing entry.
    """
    spec = loaded.spec
    if not spec.export or batches is None:
        return 0
    for index, entry in enumerate(spec.export):
        if isinstance(entry, TensorRTExport):
            continue
        try:
            find_module(model, entry.module)
        except RecipeError as exc:
            raise loaded.error(("export", index, "module"), exc.headline, hint=exc.hint) from None
    from .runner import _fuse_before_export

    _fuse_before_export(model, loaded)
    state = get_state(model)
    with loaded.located():
        disable_matching(state, spec.disable)  # precisions follow what stays enabled after calibration
    sparse_traces = []
    paths = [e.module or "" for e in spec.export if not isinstance(e, TensorRTExport)]
    with quantizers_off(state):
        try:
            captured = capture(model, batches, forward, paths, count_batches=1)
        except RecipeError as exc:
            if exc.diagnostics:  # already located (the user's forward or data raised): keep its key
                raise
            raise loaded.error(("export",), exc.headline, hint=exc.hint) from None
        traced = 0
        for index, entry in enumerate(spec.export):
            if isinstance(entry, TensorRTExport):
                continue
            call = captured.inputs[entry.module or ""]
            module = find_module(model, entry.module)
            try:
                trace = _trace(module, entry, call.args, call.kwargs)
            except RecipeError as exc:
                key = ("export", index, getattr(exc, "entry_key", "module"))
                raise loaded.error(key, f"{entry.path}: not exportable: {exc.headline}", hint=exc.hint) from None
            if trace is not None:
                sparse_traces.append((index, entry, trace))
            traced += 1
    names_of = {id(q): names for names, q in state.unique()}
    for index, entry, trace in sparse_traces:  # with the quantizers' own enabled state restored
        try:
            check_trace(trace, names_of, entry.allow_fp16_to_int8)
        except RecipeError as exc:
            raise loaded.error(("export", index), f"{entry.path}: {exc.headline}", hint=exc.hint) from None
    return traced


def _trace(module: nn.Module, entry: OnnxQdqExport | OnnxSparseExport, args: tuple, kwargs: dict) -> Any:
    """The sparse trace of an ``onnx-sparse`` entry (None for ``onnx-qdq``); raises when not exportable."""
    was_training = module.training
    module.eval()
    try:
        runner, run_args, run_kwargs = wrap_call(module, args, kwargs, entry)
        if isinstance(entry, OnnxSparseExport):
            from .sparse_trace import trace_sparse

            trace = trace_sparse(module, entry.module or "", run_args, run_kwargs, runner=runner)
        else:
            from .onnx_qdq import export_qdq

            trace = None
            export_qdq(runner, run_args, run_kwargs, entry.opset, False, entry.dynamic_axes)
        check_reads(runner)
    finally:
        module.train(was_training)
    return trace
