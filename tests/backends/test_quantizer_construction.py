"""The backend's quantizers built from a prototype are the library's own quantizers, sharing nothing."""

from __future__ import annotations

import torch
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.calib import MaxCalibrator
from pytorch_quantization.tensor_quant import QuantDescriptor

from recipe_engine.backends.pytorch_quantization import BACKEND, _fresh_quantizer
from recipe_engine.backends.pytorch_quantization.calibrators import FastHistogramCalibrator, FastMaxCalibrator
from recipe_engine.recipe import load_recipe_data

FIELDS = dict(num_bits=8, axis=0, unsigned=False, narrow_range=True, calib_method="max", learn_amax=False,
              fake_quant=True, amax=None)


def test_fresh_quantizer_is_the_library_constructor_state() -> None:
    ours, library = _fresh_quantizer(FIELDS), quant_nn.TensorQuantizer(QuantDescriptor(**FIELDS))
    assert type(ours) is type(library) and set(ours.__dict__) == set(library.__dict__)
    for key, value in library.__dict__.items():
        if key == "_calibrator":
            assert type(ours._calibrator) is MaxCalibrator and ours._calibrator.__dict__ == value.__dict__
        else:
            assert type(ours.__dict__[key]) is type(value) and ours.__dict__[key] == value, key
    x = torch.randn(3, 5)
    assert str(ours) == str(library)
    ours.enable_calib(), ours.disable_quant(), library.enable_calib(), library.disable_quant()
    ours(x), library(x)
    assert torch.equal(ours._calibrator.compute_amax(), library._calibrator.compute_amax())


def test_fresh_quantizers_share_no_container() -> None:
    a, b = _fresh_quantizer(FIELDS), _fresh_quantizer(FIELDS)
    for key, value in a.__dict__.items():
        if isinstance(value, (dict, set)) or key == "_calibrator":
            assert value is not b.__dict__[key], key
    a.register_buffer("_amax", torch.ones(2))
    a.register_forward_hook(lambda *args: None)
    assert "_amax" not in b._buffers and not b._forward_hooks
    assert "_amax" not in _fresh_quantizer(FIELDS)._buffers  # nor with the cached prototype


def test_make_quantizer_kinds() -> None:
    spec = load_recipe_data({"recipe": "r", "version": "1.0.0",
                             "quantizers": {"h": {"calibrator": "histogram"}, "m": {"per_channel": True},
                                            "l": {"learn_amax": True, "amax": 2.0}},
                             "rules": []}).spec
    calibration = spec.calibration
    h = BACKEND.make_quantizer(spec.quantizers["h"], calibration)
    m = BACKEND.make_quantizer(spec.quantizers["m"], calibration, channel_axis=0)
    learned = BACKEND.make_quantizer(spec.quantizers["l"], calibration)
    assert isinstance(h._calibrator, FastHistogramCalibrator) and h.axis is None
    assert isinstance(m._calibrator, FastMaxCalibrator) and m.axis == 0 and m._calibrator._axis == 0
    assert hasattr(learned, "clip") and float(learned.amax) == 2.0  # built by the library's constructor
    identity = BACKEND.identity_quantizer()
    assert identity._disabled and not BACKEND.is_enabled(identity)
