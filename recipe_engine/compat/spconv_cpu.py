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

CUDA tensors take the original code paths untouched.
"""

from __future__ import annotations

import functools

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


def install() -> bool:
    """Install both fixes into ``spconv.pytorch.ops`` (idempotent). False when spconv is absent.

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
    original_stream = ops.get_current_stream

    def get_current_stream() -> int:
        if not torch.cuda.is_available():
            return 0
        return original_stream()

    ops.get_current_stream = get_current_stream
    _INSTALLED = True
    return True
