"""``tensorrt``: build a TensorRT engine from an ``onnx-qdq`` export and verify it by signal.

Needs the ``tensorrt`` Python package (``pip install 'recipe-engine[tensorrt]'``, TensorRT 10 or
11) and a CUDA GPU. Without them the export is *skipped* (a clear reason in the result) unless the
entry says ``required: true``. How the network is built depends on the major version
(:func:`network_flags`, :func:`builder_flags`):

- **TensorRT 11**: a *strongly typed* network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``;
  11 removed the ``INT8``/``FP16`` builder flags). Every tensor keeps the type the ONNX graph
  gives it: the Q/DQ pairs make their layers INT8, and the other layers run in the graph's
  float type. An FP32 ``onnx-qdq`` source therefore runs its non-quantized layers in FP32; for
  FP16 there, export the source with ``fp16: true`` (an FP16 graph, Q/DQ kept FP32 behind casts).
- **TensorRT 10**: the ``INT8`` and ``FP16`` builder flags on a weakly typed network (the Q/DQ
  nodes decide which layers run INT8, the builder may pick FP16 for the others).

The entry's workspace and one optimisation profile covering the source export's dynamic axes
(``min`` 1 on each dynamic axis, ``opt`` and ``max`` the captured shape, unless ``shapes`` gives
them) apply to both. The equivalent ``trtexec`` command line is returned too.
"""

from __future__ import annotations

import importlib.util
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..recipe.errors import RecipeError
from ..util.atomic import atomic_write_bytes


def availability() -> str | None:
    """None when TensorRT and a CUDA GPU are usable, else the reason they are not."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install 'recipe-engine[tensorrt]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available (torch.cuda.is_available() is False)"
    return None


def profile_shapes(feeds: Mapping[str, np.ndarray], dynamic_axes: Mapping[str, Mapping[int, str]] | None,
                   shapes: Mapping[str, Mapping[str, list[int]]] | None = None) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape per input: explicit ``shapes`` win; dynamic axes get min 1, opt = max = captured."""
    result: dict[str, dict[str, list[int]]] = {}
    for name, array in feeds.items():
        captured = list(array.shape)
        minimum = list(captured)
        for axis in (dynamic_axes or {}).get(name, {}):
            minimum[int(axis)] = 1
        result[name] = {"min": minimum, "opt": list(captured), "max": list(captured)}
        if shapes and name in shapes:
            result[name].update({k: list(v) for k, v in shapes[name].items()})
    return result


def major_version(version: str) -> int:
    """The major version of a TensorRT version string ("10.13.3.9" -> 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise RecipeError(f"tensorrt: cannot read the version {version!r}") from None


def strongly_typed(version: str | None) -> bool:
    """Whether this TensorRT version is built with a strongly typed network (11 and later).
    None (TensorRT not installed): False, the TensorRT 10 build."""
    return version is not None and major_version(version) >= 11


def network_kind(version: str | None) -> str:
    return "strongly typed" if strongly_typed(version) else "INT8+FP16 builder flags"


def network_flags(trt: Any) -> int:
    """``create_network`` flags: STRONGLY_TYPED on >= 11; EXPLICIT_BATCH below 10 (implicit since 10)."""
    major = major_version(trt.__version__)
    if major < 10:
        raise RecipeError(f"tensorrt: TensorRT {trt.__version__} is too old; install TensorRT 10 or 11",
                          hint="pip install 'recipe-engine[tensorrt]'")
    if major >= 11:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def builder_flags(trt: Any) -> list[Any]:
    """Builder flags to set: INT8 and FP16 on TensorRT 10; none on >= 11 (types come from the graph)."""
    if major_version(trt.__version__) >= 11:
        return []
    return [trt.BuilderFlag.INT8, trt.BuilderFlag.FP16]


def installed_version() -> str | None:
    """The installed TensorRT's version, read from package metadata (no import, no GPU needed)."""
    from importlib import metadata

    for name in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def trtexec_command(onnx_path: str, engine_path: str, workspace_gb: float,
                    profile: Mapping[str, Mapping[str, list[int]]], dynamic: bool,
                    version: str | None = None) -> str:
    """The trtexec command line that reproduces the build with TensorRT ``version`` (None: 10)."""
    precision = ["--stronglyTyped"] if strongly_typed(version) else ["--int8", "--fp16"]
    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", *precision,
             f"--memPoolSize=workspace:{int(round(workspace_gb * 1024))}"]
    if dynamic:
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            parts.append(flag + "=" + ",".join(f"{n}:{'x'.join(str(d) for d in s[key])}" for n, s in profile.items()))
    return " ".join(shlex.quote(p) for p in parts)


def build_engine(onnx_bytes: bytes, workspace_gb: float, profile: Mapping[str, Mapping[str, list[int]]],
                 dynamic: bool, int8: bool = True) -> bytes:
    """Parse ONNX and build a serialized engine with the TensorRT Python API (10: flags, 11: strongly typed).

    ``int8=False`` (a graph without Q/DQ, e.g. an FP16 baseline) sets only the FP16 flag on TensorRT 10."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RecipeError(f"tensorrt: the ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    for flag in builder_flags(trt):
        if int8 or flag != trt.BuilderFlag.INT8:
            config.set_flag(flag)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if dynamic:
        opt_profile = builder.create_optimization_profile()
        for name, shape in profile.items():
            opt_profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
        config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RecipeError("tensorrt: the engine build failed (see the TensorRT log above)")
    return bytes(serialized)


@dataclass
class Bound:
    """A deserialized engine's execution context with its CUDA buffers bound (the runtime and engine are kept
    alive with it): ready for ``context.execute_async_v3``."""

    context: Any
    buffers: dict
    outputs: list[str]
    keep: tuple


def bind(engine_bytes: bytes, feeds: Mapping[str, np.ndarray]) -> Bound:
    """Deserialize ``engine_bytes``, copy ``feeds`` to CUDA buffers, allocate the outputs, set every address."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    context = engine.create_execution_context()
    buffers: dict[str, torch.Tensor] = {}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            context.set_input_shape(name, tuple(tensor.shape))
            buffers[name] = tensor
    outputs = []
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            outputs.append(name)
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    return Bound(context, buffers, outputs, (runtime, engine))


def run_engine(engine_bytes: bytes, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a serialized engine once on ``feeds`` (TensorRT >= 8.5 tensor API), outputs as numpy."""
    import torch

    bound = bind(engine_bytes, feeds)
    stream = torch.cuda.Stream()
    if not bound.context.execute_async_v3(stream.cuda_stream):
        raise RecipeError("tensorrt: engine execution failed")
    stream.synchronize()
    return [bound.buffers[n].float().cpu().numpy() for n in bound.outputs]


def save_engine(path: str, engine_bytes: bytes) -> None:
    atomic_write_bytes(path, engine_bytes)


def describe(profile: Mapping[str, Mapping[str, list[int]]]) -> dict[str, Any]:
    return {name: {k: list(v) for k, v in shape.items()} for name, shape in profile.items()}
