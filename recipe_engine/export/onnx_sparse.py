"""``onnx-sparse``: a traced spconv module written in NVIDIA libspconv's sparse ONNX format.

From a :class:`~.sparse_trace.SparseTrace` this module
- folds ``Relu`` into the conv that feeds it (``activation="ReLU"``) when nothing else reads
  the conv's output, and drops a Relu after a conv that already applies ReLU;
- converts the coordinate order when the file's ``layout`` differs from the model's
  (``source_layout``): kernel axes of every weight and kernel/stride/padding/dilation/
  output_padding and spatial shapes are reversed; the runtime then gets indices with columns 1
  and 3 swapped;
- decides precisions: a conv is ``int8`` when its input and weight quantizers are both enabled,
  an Add when its op-site quantizer is; ``output_precision`` follows :mod:`.scn_precision` (int8
  when every reader is int8 through one quantizer); an int8 layer that would read fp16 is an
  error unless ``allow_fp16_to_int8``. Calibrated ranges are written on fp16 layers too, as
  NVIDIA's exporters do;
- sets ``output_bound`` (a deployment capacity, 200000 unless the recipe says otherwise): an
  error when calibration produced more points, a warning and a note when it came within
  ``output_bound_headroom`` of it;
- writes tensors named "0", "1", ... in production order, FP16 ``raw_data`` initializers
  ``spconv{k}.weight`` / ``spconv{k}.bias`` (zero bias when the conv has none), and the
  ScatterDense / Transpose / Reshape tail of each output: the model's own arrangement, or the
  one a compatibility profile's application reads (:mod:`.scn_compat`).

The batch axis is 1 in ``output_shape`` and in Reshape ``dims``: libspconv runs one sample.
Planning lives in :mod:`.scn_plan`, graph writing in :mod:`.scn_write`, the tails in :mod:`.scn_tail`
and the precision chain in :mod:`.scn_precision`; this module drives them and checks the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from ..recipe.errors import RecipeError
from .scn_checks import check_scn
from .scn_compat import get_profile
from .scn_plan import (
    DEFAULT_OUTPUT_BOUND,
    ConvPlan,
    assign_precisions,
    check_output_bound,
    check_rulebooks,
    fold_relus,
    fp16_ranges,
    plan_adds,
    plan_conv,
)
from .scn_tail import REVERSE, OutputPlan, plan_output
from .scn_write import write_graph
from .sparse_trace import SparseTrace

__all__ = ["DEFAULT_OUTPUT_BOUND", "REVERSE", "ConvPlan", "OutputPlan", "SparseExport", "build_scn", "plan_conv",
           "plan_output"]


@dataclass
class SparseExport:
    model: onnx.ModelProto
    outputs: list[OutputPlan]
    point_counts: dict[str, int]
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def build_scn(trace: SparseTrace, *, layout: str, source_layout: str, headroom: float,
              fixed_bound: int | None, point_counts: dict[str, int], input_points: int,
              names_of: dict[int, list[str]], allow_fp16_to_int8: bool = False,
              compat: str | None = None) -> SparseExport:
    """Turn ``trace`` into a checked libspconv ModelProto (``compat``: a profile of :mod:`.scn_compat`)."""
    convert = layout != source_layout
    profile = get_profile(compat)
    if profile is not None and layout not in profile.layouts:
        raise RecipeError(f"onnx-sparse: {profile.application} indexes voxels as {' or '.join(profile.layouts)}, "
                          f"this export's layout is {layout!r}", hint=f"set layout: {profile.layouts[0]}")
    notes: list[str] = []
    convs: dict[int, ConvPlan] = {}
    conv_ops = [op for op in trace.ops if op.kind == "conv"]
    for op in conv_ops:
        plan = plan_conv(op, convert, names_of)
        if plan.note:
            notes.append(plan.note)
        if plan.precision == "fp16":
            fp16_ranges(plan)
        convs[id(op)] = plan
    check_rulebooks(conv_ops, convs)
    ops, alias = fold_relus(trace, convs)

    adds = plan_adds(ops, names_of)
    assign_precisions(ops, convs, adds, alias, names_of, trace.module_classes, allow_fp16_to_int8, notes)

    counts, largest, bound = check_output_bound(convs, point_counts, input_points, fixed_bound, headroom, notes)
    if profile is not None and len(trace.outputs) != 1:
        raise RecipeError(f"onnx-sparse: {profile.application} reads one output; {len(trace.outputs)} outputs are "
                          "traced", hint="export a module with one dense output, or set compat: none")
    outputs = [plan_output(trace, v, layout, convert, profile) for v in trace.outputs]
    if profile is not None and not all(o.exact for o in outputs):
        letters = dict(zip(("s0", "s1", "s2"), source_layout, strict=True))
        axes = ",".join(letters.get(a, a) for a in outputs[0].axes)
        notes.append(f"compat {profile.name}: the file's BEV map is {profile.bev} (axes {axes} of the model's grid) "
                     f"as {profile.application} reads it; the model's own output is arranged otherwise, so a dense "
                     "part exported from this model takes the other arrangement")
    model = write_graph(trace, ops, alias, convs, adds, outputs, layout, convert, bound)
    check_scn(model, counts, allow_fp16_to_int8=allow_fp16_to_int8, compat=compat)
    int8_convs = sum(1 for p in convs.values() if p.precision == "int8")
    summary = {"convs": len(convs), "int8_convs": int8_convs, "fp16_convs": len(convs) - int8_convs,
               "adds": len(adds), "int8_adds": sum(1 for a in adds.values() if a["precision"] == "int8"),
               "relus": sum(1 for op in ops if op.kind == "relu"), "output_bound": bound,
               "max_points": largest, "output_bound_used": round(largest / bound, 4), "layout": layout, "source_layout": source_layout,
               "compat": profile.name if profile is not None else "none",
               "fp16_with_ranges": sum(1 for p in convs.values() if p.precision == "fp16" and p.input_range is not None)
               + sum(1 for a in adds.values() if a["precision"] == "fp16" and a["ranges"][0] is not None)}
    return SparseExport(model, outputs, counts, summary, notes)
