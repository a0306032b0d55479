"""spconv 2.3.8 on CPU-only torch builds: two defects, fixed in one place.

1. Wrong results with more than one thread. ``spconv.pytorch.ops.indice_conv`` (the CPU
   gather -> mm -> scatter-add path used in inference) and ``indice_conv_backward`` return
   different, wrong features from run to run when torch runs with 2+ intra-op threads
   (measured here: 9 of 30 identical SubMConv3d calls and 29 of 30 SparseConv3d calls differed
   by up to 0.4 with 2 threads; 0 of 30 with 1 thread; guarding ``get_indice_pairs`` alone
   did not help). The CPU calls are therefore run with one intra-op thread (restored after).
2. ``indice_conv_backward`` asks ``torch.cuda.current_stream()`` before checking the device,
   so any backward pass through a sparse conv raises "Torch not compiled with CUDA enabled".
   The stream lookup returns the null stream when CUDA is unavailable.

3. No bias or fused activation in CPU inference. In eval mode spconv passes a layer's bias
   (spconv's default is ``bias=True``) and its ``act_type`` to ``indice_conv``, whose CPU path
   asserts "cpu don't support act and bias": a plain biased ``SubMConv3d`` cannot run inference
   on CPU. On CPU the call is made without them and the bias and activation (ReLU, LeakyReLU,
   Sigmoid) are applied to its output, which is what the CUDA kernel computes; in training
   spconv adds the bias itself, outside, as before.

CUDA tensors take the original code paths untouched.
"""

from __future__ import annotations

import functools
import inspect

import torch

_INSTALLED = False


def _single_threaded_on_cpu(fn):
    @functools.wraps(fn)
    def wrapper(features, *args, **kwargs):
        if features.is_cuda:
            return fn(features, *args, **kwargs)
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(features, *args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(features, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    wrapper.__recipe_engine_guard__ = True
    return wrapper


def _bias_and_act_after_on_cpu(fn):
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(features, *args, **kwargs):
        if features.is_cuda:
            return fn(features, *args, **kwargs)
        bound = signature.bind(features, *args, **kwargs)
        bias, act = bound.arguments.get("bias"), bound.arguments.get("act_type")
        none = type(act).None_ if act is not None else None
        if bias is None and (act is None or act == none):
            return fn(features, *args, **kwargs)
        bound.arguments["bias"] = None
        if act is not None:
            bound.arguments["act_type"] = none
        out = fn(*bound.args, **bound.kwargs)
        if bias is not None:
            out = out + bias
        name = getattr(act, "name", "None_") if act is not None and act != none else "None_"
        if name == "ReLU":
            out = torch.relu(out)
        elif name == "LeakyReLU":
            out = torch.nn.functional.leaky_relu(out, float(bound.arguments.get("act_alpha", 0.0)))
        elif name == "Sigmoid":
            out = torch.sigmoid(out)
        elif name != "None_":
            raise NotImplementedError(f"spconv on CPU: fused activation {name} is not supported")
        return out

    wrapper.__recipe_engine_bias_guard__ = True
    return wrapper


def install() -> bool:
    """Install the fixes into ``spconv.pytorch.ops`` (idempotent). False when spconv is absent.

    ``spconv.pytorch.functional`` looks these functions up on ``ops`` at call time, so
    replacing the module attributes is enough.
    """
    global _INSTALLED
    if _INSTALLED:
        return True
    try:
        from spconv.pytorch import ops
    except ImportError:
        return False
    for name in ("indice_conv", "indice_conv_backward"):
        original = getattr(ops, name)
        if not getattr(original, "__recipe_engine_guard__", False):
            setattr(ops, name, _single_threaded_on_cpu(original))
    if not getattr(ops.indice_conv, "__recipe_engine_bias_guard__", False):
        ops.indice_conv = _bias_and_act_after_on_cpu(ops.indice_conv)
    original_stream = ops.get_current_stream

    def get_current_stream() -> int:
        if not torch.cuda.is_available():
            return 0
        return original_stream()

    ops.get_current_stream = get_current_stream
    _INSTALLED = True
    return True
