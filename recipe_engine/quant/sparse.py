"""Quantized spconv 2.x sparse convolutions.

A selected spconv module keeps its identity, attributes (indice_key, act_type, algo, ...)
and parameters; its class becomes a generated subclass ``Quant<Name>`` of its own class
whose forward fake-quantizes the input features (per tensor) and the weight (per output
channel: axis 0 of spconv 2.x's ``[O, k.., I]`` layout) with the quantizer objects of the
recipe's backend (any backend: they are called, nothing else) and then runs spconv's own
convolution through the public module path ``_conv_forward`` of the same class. A missing
quantizer (None) passes its tensor through.

Kernel-size-1 layers (spconv's ``conv1x1``: kernel 1 and, unless submanifold, stride 1) are the
exception: spconv 2.3.8 computes them as ``features @ weight.view(I, O)``, so their output
channel ``o`` is column ``o`` of that matrix, not ``weight[o]``. :func:`weight_matrix_1x1`,
:func:`weight_channel_axis` and :func:`kernel_weight` give the quantizer that view (axis 1 of
``[I, O]``) and give exporters the ``[O, k.., I]`` weight that computes what PyTorch computed.

Bias and activation are applied in PyTorch after the convolution: spconv's CPU kernels
refuse a fused bias/activation in inference ("cpu don't support act and bias"), so this
also lets folded (biased) and ReLU-fused sparse convs run on CPU. With both quantizers
disabled the output equals the original layer's bit for bit.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .slots import QuantizerSlots

Quantizer = nn.Module  # a backend's quantizer object

try:  # spconv is optional: dense-only models work without it
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo  # noqa: F401  (imported to fail early on a broken install)
    from spconv.pytorch.conv import SparseConvolution
    from spconv.pytorch.core import SparseConvTensor

    from ..compat import spconv_cpu

    spconv_cpu.install()
    HAVE_SPCONV = True
except ImportError:  # pragma: no cover - exercised on machines without spconv
    spconv = None
    SparseConvolution = None
    SparseConvTensor = None
    HAVE_SPCONV = False


def is_sparse_conv(module: nn.Module) -> bool:
    return HAVE_SPCONV and isinstance(module, SparseConvolution)


def is_sparse_tensor(value: object) -> bool:
    return HAVE_SPCONV and isinstance(value, SparseConvTensor)


def activation_name(module: nn.Module) -> str:
    """'ReLU', 'None', ... from a spconv module's act_type."""
    act = getattr(module, "act_type", None)
    text = str(act).split(".")[-1] if act is not None else "None_"
    return {"None_": "None"}.get(text, text)


def apply_activation(features: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Apply a spconv module's fused activation in PyTorch."""
    name = activation_name(module)
    if name == "None":
        return features
    if name == "ReLU":
        return torch.relu(features)
    if name == "LeakyReLU":
        return torch.nn.functional.leaky_relu(features, module.act_alpha)
    if name == "Sigmoid":
        return torch.sigmoid(features)
    raise NotImplementedError(f"spconv activation {name}")


class QuantSparseConvMixin(QuantizerSlots):
    """Forward of a quantized spconv convolution (see the module docstring); quantizers in engine slots."""

    _input_quantizer: Quantizer | None
    _weight_quantizer: Quantizer | None

    def forward(self, input, add_input=None):  # noqa: A002 - spconv's signature
        if add_input is not None:
            raise NotImplementedError("quantized sparse conv with add_input: write the add in the block forward")
        features = input.features if self._input_quantizer is None else self._input_quantizer(input.features)
        x = input.replace_feature(features) if features is not input.features else input
        weight = self.weight if self._weight_quantizer is None else quantize_weight(self, self._weight_quantizer)
        none_act = type(self.act_type).None_
        act_type, self.act_type = self.act_type, none_act  # spconv asserts no fused act when training
        try:
            out = self._conv_forward(self.training, x, weight, None, None, name=self.name,
                                     sparse_unique_name=self._sparse_unique_name, act_type=none_act,
                                     act_alpha=self.act_alpha, act_beta=self.act_beta)
        finally:
            self.act_type = act_type
        result = out.features
        if self.bias is not None:
            result = result + self.bias
        result = apply_activation(result, self)
        return out.replace_feature(result) if result is not out.features else out



def is_conv1x1(module: nn.Module) -> bool:
    """True for a spconv layer that spconv runs as ``features @ weight.view(in_channels, out_channels)``."""
    return bool(getattr(module, "conv1x1", False)) and is_sparse_conv(module)


def weight_channel_axis(module: nn.Module) -> int:
    """Output-channel axis of the tensor the weight quantizer sees: 1 of ``[I, O]`` for 1x1 layers, else 0."""
    return 1 if is_conv1x1(module) else 0


def weight_matrix_1x1(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The ``[I, O]`` matrix spconv multiplies the features by in a 1x1 layer."""
    return weight.reshape(int(module.in_channels), int(module.out_channels))


def quantize_weight(module: nn.Module, quantizer: Quantizer) -> torch.Tensor:
    """``module.weight`` through ``quantizer``, per output channel as the layer computes."""
    if is_conv1x1(module):
        return quantizer(weight_matrix_1x1(module, module.weight)).reshape(module.weight.shape)
    return quantizer(module.weight)


def kernel_weight(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (shaped like ``module.weight``) as the ``[O, k.., I]`` kernel it computes with."""
    if is_conv1x1(module):
        out_c, in_c = int(module.out_channels), int(module.in_channels)
        return weight_matrix_1x1(module, weight).t().reshape(out_c, *weight.shape[1:-1], in_c)
    return weight


@functools.cache
def quant_class_for(cls: type) -> type:
    """The generated quantized subclass of a spconv convolution class."""
    if issubclass(cls, QuantSparseConvMixin):
        return cls
    return type(f"Quant{cls.__name__}", (QuantSparseConvMixin, cls), {"__module__": __name__})


def swap_sparse_module(module: nn.Module, input_quantizer: Quantizer | None,
                       weight_quantizer: Quantizer | None) -> nn.Module:
    """Make ``module`` (a spconv convolution) quantized, in place; no parameter is copied."""
    if not is_sparse_conv(module):
        raise TypeError(f"{type(module).__name__} is not a spconv convolution")
    module.__class__ = quant_class_for(type(module))
    module.set_quantizer("input", input_quantizer)
    module.set_quantizer("weight", weight_quantizer)
    return module


def original_class(module: nn.Module) -> type:
    """The spconv class a quantized sparse module was made from."""
    cls = type(module)
    if issubclass(cls, QuantSparseConvMixin):
        return next(base for base in cls.__mro__[1:] if not issubclass(base, QuantSparseConvMixin))
    return cls
