"""Compatibility profiles: the libspconv file that NVIDIA's CUDA-CenterPoint or CUDA-BEVFusion loads.

Both applications load the sparse backbone with ``spconv::load_engine_from_onnx`` and use its
input 0 (fp16 voxel features [N, C], int32 indices [N, 4] in the application's coordinate order)
and its output 0 (an fp16 BEV map handed to TensorRT). What each expects, from their code:

``cuda-centerpoint``
    CUDA-CenterPoint ``src/centerpoint.cpp`` (``CenterPoint::doinfer``: indices (batch, z, y, x),
    ``result->features_data()`` fed to the RPN engine) and ``qat/onnx_export/exptool.py``
    (``dense()`` -> ScatterDense ``format="zyx"``, then ``view`` -> Reshape). Layout ``zyx``; tail
    ScatterDense -> Reshape ``[1, C*Z, Y, X]``; no Transpose.
``cuda-bevfusion``
    CUDA-BEVFusion ``src/main.cpp`` (``create_core``: ``lidar.backbone.xyz.onnx`` with
    ``CoordinateOrder::XYZ``; ``export-scn.py --inverse`` writes the ``zyx`` variant) and
    ``qat/lean/exptool.py`` (``make_model_forward_hook``: ``permute`` then ``reshape(N, C*Z, X, Y)``).
    Layout ``xyz`` or ``zyx``; tail ScatterDense -> Transpose (``[0,1,4,2,3]`` for xyz,
    ``[0,1,2,4,3]`` for zyx) -> Reshape ``[1, C*Z, X, Y]``.

Both also need what every file needs (graph ``scn``, input ``"0"``, decimal tensor names, fp16
before ScatterDense) plus exactly one output, and their precisions: NVIDIA's ``export-scn.py``
sets every layer int8 except the ones it lists, so every int8 layer reads int8 (no
``allow_fp16_to_int8``). :func:`profile_problems` checks a written file against a profile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

TRANSPOSE_DIMS = {"xyz": [0, 1, 4, 2, 3], "zyx": [0, 1, 2, 4, 3]}


@dataclass(frozen=True)
class Profile:
    name: str
    application: str
    layouts: tuple[str, ...]
    transpose: bool  # a Transpose between ScatterDense and Reshape
    bev: str  # the output's axes, for messages


PROFILES = {
    "cuda-centerpoint": Profile("cuda-centerpoint", "CUDA-CenterPoint", ("zyx",), False, "[1, C*Z, Y, X]"),
    "cuda-bevfusion": Profile("cuda-bevfusion", "CUDA-BEVFusion", ("xyz", "zyx"), True, "[1, C*Z, X, Y]"),
}


def get_profile(name: str | None) -> Profile | None:
    return None if name in (None, "none") else PROFILES[name]


def tail(profile: Profile, layout: str) -> tuple[list[int] | None, Callable[[list[int]], list[int]]]:
    """The Transpose dims (or None) after a ``layout`` ScatterDense, and the Reshape of the transposed shape."""
    perm = TRANSPOSE_DIMS[layout] if profile.transpose else None

    def reshape(shape: list[int]) -> list[int]:  # N, C, a, b, c -> 1, C*a, b, c
        return [1, shape[1] * shape[2], shape[3], shape[4]]

    return perm, reshape


def expected_dims(profile: Profile, layout: str, scatter_shape: list[int]) -> tuple[list[int] | None, list[int]]:
    perm, reshape = tail(profile, layout)
    shape = [scatter_shape[p] for p in perm] if perm else list(scatter_shape)
    return perm, reshape(shape)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def profile_problems(model: onnx.ModelProto, profile: Profile, int8_fed_by_fp16: list[str]) -> list[str]:
    """Every way ``model`` differs from what ``profile``'s application loads."""
    graph = model.graph
    app = profile.application
    problems: list[str] = []
    if graph.name != "scn":
        problems.append(f"{app}: the graph must be named 'scn', is {graph.name!r}")
    if len(graph.output) != 1:
        problems.append(f"{app} reads output 0 only; the file has {len(graph.output)} outputs")
    scatters = [n for n in graph.node if n.op_type == "ScatterDense"]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for scatter in scatters:
        attrs = _attrs(scatter)
        layout = _text(attrs.get("format", ""))
        if layout not in profile.layouts:
            problems.append(f"{app} indexes voxels as {' or '.join(profile.layouts)}; ScatterDense "
                            f"{scatter.name!r} has format {layout!r}")
            continue
        perm, dims = expected_dims(profile, layout, list(attrs.get("output_shape", [])))
        chain = []
        current = scatter.output[0]
        while len(consumers.get(current, [])) == 1:
            node = consumers[current][0]
            chain.append(node)
            current = node.output[0]
        wanted = (["Transpose"] if perm else []) + ["Reshape"]
        found = [n.op_type for n in chain]
        if found != wanted:
            problems.append(f"{app} expects ScatterDense -> {' -> '.join(wanted)}; {scatter.name!r} is followed "
                            f"by {' -> '.join(found) or 'nothing'}")
            continue
        if perm and list(_attrs(chain[0])["dims"]) != perm:
            problems.append(f"{app}: Transpose {chain[0].name!r} dims {list(_attrs(chain[0])['dims'])} != {perm}")
        if list(_attrs(chain[-1])["dims"]) != dims:
            problems.append(f"{app} reads the BEV map as {profile.bev} = {dims}; Reshape {chain[-1].name!r} "
                            f"writes {list(_attrs(chain[-1])['dims'])}")
        if [o.name for o in graph.output] != [chain[-1].output[0]]:
            problems.append(f"{app}: the graph output must be the Reshape's output {chain[-1].output[0]!r}")
        else:
            shape = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
            if shape != dims:
                problems.append(f"{app}: the graph output is declared {shape}, the Reshape makes {dims}")
    if not scatters:
        problems.append(f"{app} needs a ScatterDense output")
    if int8_fed_by_fp16:
        problems.append(f"{app} loads NVIDIA's int8 chains; int8 layers reading fp16: {', '.join(int8_fed_by_fp16)}")
    return problems
