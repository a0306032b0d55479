"""``tensorrt``: build a TensorRT engine from an ``onnx-qdq`` export and compare it with onnxruntime.

Needs the ``tensorrt`` Python package (``pip install 'recipe-engine[tensorrt]'``) and a CUDA GPU.
Without them the export is *skipped* (a clear reason in the result) unless the entry says
``required: true``. The engine is built with the INT8 and FP16 flags (the Q/DQ nodes decide
which layers run INT8), the entry's workspace, and one optimisation profile covering the
source export's dynamic axes: ``min`` 1 on each dynamic axis, ``opt`` and ``max`` the captured
shape, unless ``shapes`` gives them. The equivalent ``trtexec`` command line is returned too.
"""

from __future__ import annotations

import importlib.util
import shlex
from collections.abc import Mapping
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


def trtexec_command(onnx_path: str, engine_path: str, workspace_gb: float,
                    profile: Mapping[str, Mapping[str, list[int]]], dynamic: bool) -> str:
    """The trtexec command line that reproduces the build."""
    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--int8", "--fp16",
             f"--memPoolSize=workspace:{int(round(workspace_gb * 1024))}"]
    if dynamic:
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            parts.append(flag + "=" + ",".join(f"{n}:{'x'.join(str(d) for d in s[key])}" for n, s in profile.items()))
    return " ".join(shlex.quote(p) for p in parts)


def build_engine(onnx_bytes: bytes, workspace_gb: float, profile: Mapping[str, Mapping[str, list[int]]],
                 dynamic: bool) -> bytes:
    """Parse ONNX and build a serialized INT8+FP16 engine with the TensorRT Python API."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RecipeError(f"tensorrt: the ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)
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


def run_engine(engine_bytes: bytes, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a serialized engine once on ``feeds`` (TensorRT >= 8.5 tensor API), outputs as numpy."""
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
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RecipeError("tensorrt: engine execution failed")
    stream.synchronize()
    return [buffers[n].float().cpu().numpy() for n in outputs]


def save_engine(path: str, engine_bytes: bytes) -> None:
    atomic_write_bytes(path, engine_bytes)


def describe(profile: Mapping[str, Mapping[str, list[int]]]) -> dict[str, Any]:
    return {name: {k: list(v) for k, v in shape.items()} for name, shape in profile.items()}
