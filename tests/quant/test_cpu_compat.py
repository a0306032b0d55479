"""CPU workarounds for pytorch-quantization 2.1.3 (recipe_engine.backends.pytorch_quantization.cpu_compat)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.calib import MaxCalibrator
from pytorch_quantization.calib import histogram as upstream_hist
from pytorch_quantization.tensor_quant import QuantDescriptor

from recipe_engine.backends.pytorch_quantization import cpu_compat
from recipe_engine.calib.amax_search import EmptyCalibratorError, mse_amax
from tests.helpers import upstream_on_cpu

UPSTREAM_LOAD = cpu_compat._UPSTREAM_LOAD  # captured before anything could install() the workaround


@pytest.fixture(autouse=True)
def upstream_class_method() -> Iterator[None]:
    """Each test starts from upstream's class method (other modules may have called install())."""
    was_installed = cpu_compat.is_installed()
    cpu_compat.uninstall()
    yield
    if was_installed:
        cpu_compat.install()
    else:
        cpu_compat.uninstall()


def _no_cuda(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    raise AssertionError("Torch not compiled with CUDA enabled (simulated CPU-only machine)")


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``Tensor.cuda()`` fail as on a CPU-only torch build, also on machines that have a GPU."""
    monkeypatch.setattr(torch.Tensor, "cuda", _no_cuda)


def _calibrated_conv(seed: int = 0) -> tuple[quant_nn.QuantConv2d, torch.Tensor]:
    """QuantConv2d with a histogram input quantizer (MSE) and a per-channel max weight quantizer."""
    torch.manual_seed(seed)
    conv = quant_nn.QuantConv2d(
        3, 8, 3, quant_desc_input=QuantDescriptor(num_bits=8, calib_method="histogram")
    )
    batches = [torch.randn(4, 3, 16, 16) * (1 + i / 4) for i in range(3)]
    quantizers = (conv._input_quantizer, conv._weight_quantizer)
    for quantizer in quantizers:
        quantizer.disable_quant()
        quantizer.enable_calib()
    with torch.no_grad():
        for batch in batches:
            conv(batch)
    for quantizer in quantizers:
        quantizer.disable_calib()
        quantizer.enable_quant()
    cpu_compat.load_calib_amax(conv._input_quantizer, "mse")
    cpu_compat.load_calib_amax(conv._weight_quantizer)  # MaxCalibrator: "max"
    return conv, batches[0]


def _fresh_conv() -> quant_nn.QuantConv2d:
    return quant_nn.QuantConv2d(
        3, 8, 3, quant_desc_input=QuantDescriptor(num_bits=8, calib_method="histogram")
    )


def _saved(conv: torch.nn.Module) -> dict[str, torch.Tensor]:
    buffer = io.BytesIO()
    torch.save(conv.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu")


# ------------------------------------------------------------------------------------------------------
# 1. MSE calibration
# ------------------------------------------------------------------------------------------------------
def test_upstream_mse_calibration_fails_without_cuda(cpu_only: None) -> None:
    quantizer = quant_nn.TensorQuantizer(QuantDescriptor(num_bits=8, calib_method="histogram"))
    quantizer.enable_calib()
    quantizer(torch.randn(1000))
    with pytest.raises(AssertionError, match="CUDA"):
        quantizer.load_calib_amax("mse")


def test_mse_calibration_on_cpu_matches_search_and_upstream(cpu_only: None) -> None:
    conv, _ = _calibrated_conv()
    quantizer = conv._input_quantizer
    amax = quantizer.amax
    assert amax is not None and amax.device.type == "cpu" and torch.isfinite(amax)

    calibrator = quantizer._calibrator
    hist, edges = calibrator._calib_hist.int(), calibrator._calib_bin_edges
    assert float(amax) == float(mse_amax(hist, edges))
    assert torch.equal(amax, cpu_compat.compute_histogram_amax(calibrator, "mse"))

    with upstream_on_cpu():
        reference = float(upstream_hist._compute_amax_mse(hist.numpy(), edges.numpy(), 8, False))
    assert abs(float(amax) - reference) <= float(edges[1] - edges[0])

    weight_amax = conv._weight_quantizer.amax
    assert weight_amax.shape == (8, 1, 1, 1)
    assert torch.equal(weight_amax, conv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True))


def test_load_calib_amax_reuses_existing_buffer_and_strictness() -> None:
    quantizer = quant_nn.TensorQuantizer(QuantDescriptor(num_bits=8, calib_method="histogram", amax=1.0))
    with pytest.raises(EmptyCalibratorError, match="collected no data"):
        cpu_compat.load_calib_amax(quantizer, "entropy")
    assert torch.isnan(cpu_compat.load_calib_amax(quantizer, "entropy", strict=False))
    quantizer.enable_calib()
    quantizer(torch.randn(500))
    buffer = quantizer._amax
    assert cpu_compat.load_calib_amax(quantizer, "percentile", percentile=99.0) is buffer
    with pytest.raises(ValueError, match="method is required"):
        cpu_compat.load_calib_amax(quantizer)
    with pytest.raises(TypeError, match="HistogramCalibrator"):
        cpu_compat.compute_histogram_amax(MaxCalibrator(8, None, False), "mse")


# ------------------------------------------------------------------------------------------------------
# 2. state-dict loading
# ------------------------------------------------------------------------------------------------------
def test_upstream_state_dict_loading_fails_without_cuda(cpu_only: None) -> None:
    conv, _ = _calibrated_conv()
    with pytest.raises(AssertionError, match="CUDA"):
        _fresh_conv().load_state_dict(_saved(conv))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the real CPU-only failure")
def test_upstream_state_dict_loading_fails_on_this_cpu_machine() -> None:
    conv, _ = _calibrated_conv()
    with pytest.raises((AssertionError, RuntimeError)):
        _fresh_conv().load_state_dict(_saved(conv))


def test_cpu_safe_loading_restores_amax_and_outputs(cpu_only: None) -> None:
    conv, batch = _calibrated_conv()
    state = _saved(conv)
    restored = _fresh_conv()
    assert restored._input_quantizer.amax is None
    with cpu_compat.cpu_safe_loading(restored):
        result = restored.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    for name in ("_input_quantizer", "_weight_quantizer"):
        original, loaded = getattr(conv, name), getattr(restored, name)
        assert loaded.amax.device.type == "cpu"
        assert torch.equal(loaded.amax, original.amax)
        assert loaded.amax.data_ptr() != state[f"{name}._amax"].data_ptr()  # a copy, not the checkpoint's
    with torch.no_grad():
        assert torch.equal(restored(batch), conv(batch))
    # Scoped: the per-instance override is gone and the class is untouched.
    assert "_load_from_state_dict" not in restored._input_quantizer.__dict__
    assert quant_nn.TensorQuantizer._load_from_state_dict is UPSTREAM_LOAD


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
def test_load_state_dict_helper_and_parent_device(cpu_only: None) -> None:
    conv, _ = _calibrated_conv()
    state = _saved(conv)
    restored = _fresh_conv()
    cpu_compat.load_state_dict(restored, state)
    assert torch.equal(restored._input_quantizer.amax, conv._input_quantizer.amax)

    on_meta = _fresh_conv().to("meta")  # amax follows the parent's parameters, not the checkpoint
    with cpu_compat.cpu_safe_loading(on_meta):
        on_meta.load_state_dict(state)
    assert on_meta._input_quantizer.amax.device.type == "meta"


def test_install_is_idempotent_and_reversible(cpu_only: None) -> None:
    conv, batch = _calibrated_conv()
    state = _saved(conv)
    try:
        cpu_compat.install()
        cpu_compat.install()
        assert cpu_compat.is_installed()
        restored = _fresh_conv()
        restored.load_state_dict(state)
        with torch.no_grad():
            assert torch.equal(restored(batch), conv(batch))
    finally:
        cpu_compat.uninstall()
    assert not cpu_compat.is_installed()
    assert quant_nn.TensorQuantizer._load_from_state_dict is UPSTREAM_LOAD
    cpu_compat.uninstall()  # no-op when not installed


def test_checkpoint_without_amax_keeps_dynamic_quantizer() -> None:
    conv = _fresh_conv()
    state = {k: v for k, v in conv.state_dict().items() if not k.endswith("_amax")}
    restored = _fresh_conv()
    with cpu_compat.cpu_safe_loading(restored):
        restored.load_state_dict(state)
    assert restored._input_quantizer.amax is None
    assert np.isfinite(restored(torch.randn(1, 3, 8, 8)).detach().numpy()).all()
