"""The onnx-sparse export's memory at scale: what the trace keeps, and streaming comparison statistics.

At nuScenes scale (``benchmarks/real_scale.py``) the trace used to hold every intermediate feature
tensor and a copy of each dense output, and the comparison made float64 copies of whole outputs.
These tests check the mechanisms by weak references and tracemalloc, not by timing or RSS.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from recipe_engine.export import signal_check, verify
from recipe_engine.export.scn_tail import scatter_dense
from recipe_engine.export.signal_check import signal_figures
from recipe_engine.export.sparse_trace import trace_sparse
from tests.export.models import voxel_batches


class Chain(nn.Module):
    """SubM conv, a strided conv, then SubM convs with ReLU and a residual add, ending in ``.dense()``."""

    def __init__(self, channels: int = 8, depth: int = 4):
        super().__init__()
        self.first = spconv.SubMConv3d(4, channels, 3, padding=1, bias=False, indice_key="a")
        self.down = spconv.SparseConv3d(channels, channels, 3, stride=2, padding=1, bias=False, indice_key="d")
        self.convs = nn.ModuleList(spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key="b")
                                   for _ in range(depth))

    def forward(self, features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
        x = spconv.SparseConvTensor(features, coors, [9, 16, 16], batch_size)
        x = self.down(self.first(x))
        for conv in self.convs:
            y = conv(x)
            x = y.replace_feature(torch.relu(y.features) + x.features)
        dense = x.dense()
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


def _watch(model: Chain) -> tuple[list, list]:
    """Weak references to every conv's output features, and how many earlier ones are alive at each conv."""
    made: list[weakref.ref] = []
    alive_before: list[int] = []

    def pre(module, args) -> None:
        alive_before.append(sum(ref() is not None for ref in made[:-1]))  # all but this conv's own input

    def post(module, args, output) -> None:
        made.append(weakref.ref(output.features))

    for conv in [model.first, model.down, *model.convs]:
        conv.register_forward_pre_hook(pre)
        conv.register_forward_hook(post)
    return made, alive_before


@pytest.fixture()
def no_gc():
    """Reference counting only: what a reference cycle keeps alive stays alive."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_trace_keeps_no_intermediate_features(no_gc) -> None:
    torch.manual_seed(0)
    model = Chain().eval()
    made, alive_before = _watch(model)
    batch = voxel_batches("zyx", count=1, batch=2, points=300)[0]
    args = (batch["voxel_features"], batch["coors"], 2)
    with torch.no_grad():
        expected = model(*args)
    plain = list(alive_before)
    made.clear()
    alive_before.clear()
    trace = trace_sparse(model, "", args, {})
    assert len(alive_before) == len(plain) == 6
    assert alive_before == plain  # while the module runs, the tracer holds no features the plain forward freed
    assert all(ref() is None for ref in made)  # nor once the trace is done (no reference cycle either)
    assert torch.equal(trace.output_tensors[0], expected)
    # the conv input indices it keeps are compact (the strided conv's output indices are a slice of a
    # buffer sized for every kernel offset), with the coordinates each conv read
    indices = [op.info["in_indices"] for op in trace.ops if op.kind == "conv"]
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in indices)
    assert torch.equal(indices[0], batch["coors"]) and torch.equal(indices[2], indices[5])
    # the scatter's dense tensor (channels first) is a view of the output, not a copy
    dense = scatter_dense(trace, 0)
    assert dense.shape == (2, 8, 5, 8, 8) and torch.equal(dense.reshape(expected.shape), expected)
    assert dense.untyped_storage().data_ptr() == trace.output_tensors[0].untyped_storage().data_ptr()


# ----------------------------------------------------------------------------- the comparison
def _outputs(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(runtime, pytorch, fp32) float32 outputs: quantization-like noise, the runtime with a small offset."""
    rng = np.random.default_rng(seed)
    fp32 = rng.standard_normal(shape, dtype=np.float32)
    pytorch = fp32 + rng.normal(0, 0.05, shape).astype(np.float32)
    return pytorch + rng.normal(0, 0.02, shape).astype(np.float32) + 0.003, pytorch, fp32


@pytest.mark.parametrize("block", [97, 1000])
@pytest.mark.parametrize("shape", [(3, 40, 17, 9), (2, 3, 1500), (5, 300), (2, 3, 7)])
def test_comparison_blocks_do_not_change_the_figures(shape, block, monkeypatch) -> None:
    """Per-channel fits (whole channels or parts of one per block), one global fit, a tiny output."""
    outputs = _outputs(shape)
    whole = signal_figures(*outputs)
    monkeypatch.setattr(signal_check, "BLOCK", block)
    monkeypatch.setattr(verify, "BLOCK", block)
    blocked = signal_figures(*outputs)
    assert blocked.keys() == whole.keys()
    for key, value in whole.items():
        assert blocked[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    # the figures themselves, computed directly in float64
    rt, pt, ref = (a.astype(np.float64) for a in outputs)
    assert whole["sqnr_pytorch_db"] == pytest.approx(10 * np.log10(np.sum(ref ** 2) / np.sum((pt - ref) ** 2)))
    assert whole["max_abs_diff"] == pytest.approx(np.abs(rt - pt).max())
    assert whole["bias_steps"] == pytest.approx((rt - pt).mean() / ((pt.max() - pt.min()) / 255))


def test_comparison_streams_in_blocks(monkeypatch) -> None:
    """The figures of 1M-element outputs without one float64 copy of an output (8 MiB)."""
    monkeypatch.setattr(signal_check, "BLOCK", 1 << 12, raising=False)  # (raising: the old code had none)
    monkeypatch.setattr(verify, "BLOCK", 1 << 12, raising=False)
    outputs = _outputs((4, 16, 128, 128))
    tracemalloc.start()
    try:
        figures = signal_figures(*outputs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert figures["sqnr_runtime_db"] < figures["sqnr_pytorch_db"] < 30
