"""CenterPoint INT8 PTQ written by hand with pytorch-quantization, the way NVIDIA's scripts do it.

This is the baseline the recipe ``recipes/centerpoint_int8.yaml`` replaces: the same scheme
(BN folded, histogram inputs + per-channel max weights, a quantized add per residual block, the
neck concat sharing its scale with the head's first conv, MSE amax, ``conv_input`` and
``conv1.0`` left in full precision), spelled out in Python for the zoo model. Like NVIDIA's
CenterPoint/BEVFusion ``quantize.py`` it swaps spconv convolutions for a quantized subclass,
gives residual blocks a quantized add, collects statistics with calibration switched on and
then loads each quantizer's amax. Only the amax computation differs: pytorch-quantization's
``load_calib_amax("mse")`` calls ``.cuda()``, so histogram amax values come from
``recipe_engine.calib.amax_search.compute_amax`` (same result, CPU-safe).

The file is measured for lines of code by ``benchmarks/accuracy.py``: everything below this
docstring is what a user writes for one model. Data and the mAP evaluation are the zoo's (the
recipe uses the same ones), so they are not counted on either side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.calib import HistogramCalibrator
from pytorch_quantization.tensor_quant import QuantDescriptor
from spconv.pytorch import SparseConvTensor, SparseSequential
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from recipe_engine.backends.pytorch_quantization.calibrators import compute_amax
from recipe_engine.zoo import centerpoint as zoo
from recipe_engine.zoo.bev_blocks import SECONDFPN
from recipe_engine.zoo.sparse_encoder import SparseBasicBlock

ACT = QuantDescriptor(num_bits=8, calib_method="histogram")  # per tensor, histogram
W_OUT0 = QuantDescriptor(num_bits=8, axis=(0,))  # per output channel: Conv2d, spconv [O, k, k, k, I]
W_OUT1 = QuantDescriptor(num_bits=8, axis=(1,))  # ConvTranspose2d weight [I, O, k, k] (library default: axis 0)
CONVS = (nn.Conv2d, nn.ConvTranspose2d, SparseConvolution)
FULL_PRECISION = ("encoder.conv_input", "encoder.conv1.0")


class QuantSparseConv(SparseConvolution):
    """A spconv convolution with fake-quantized input features and weight.

    Bias is added in PyTorch after the convolution: spconv's CPU kernels refuse a fused bias.
    """

    _input_quantizer: quant_nn.TensorQuantizer
    _weight_quantizer: quant_nn.TensorQuantizer

    def forward(self, input: SparseConvTensor,  # noqa: A002 - spconv's signature
                add_input: SparseConvTensor | None = None) -> SparseConvTensor:
        x = input.replace_feature(self._input_quantizer(input.features))
        out = self._conv_forward(self.training, x, self._weight_quantizer(self.weight), None, add_input,
                                 name=self.name, sparse_unique_name=self._sparse_unique_name,
                                 act_type=self.act_type, act_alpha=self.act_alpha, act_beta=self.act_beta)
        return out if self.bias is None else out.replace_feature(out.features + self.bias)


class QuantBasicBlock(SparseBasicBlock):
    """SparseBasicBlock whose residual add quantizes both inputs with one quantizer."""

    _add_quantizer: quant_nn.TensorQuantizer

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features))
        added = self._add_quantizer(out.features) + self._add_quantizer(identity.features)
        return out.replace_feature(self.relu(added))


class QuantSECONDFPN(SECONDFPN):
    """SECONDFPN whose concat inputs go through one quantizer."""

    _cat_quantizer: quant_nn.TensorQuantizer

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        ups = [deblock(f) for deblock, f in zip(self.deblocks, feats, strict=True)]
        return torch.cat([self._cat_quantizer(u) for u in ups], dim=1)


def fold_bn(conv: nn.Module, bn: nn.Module, out_axis: int = 0) -> None:
    """Fold an eval-mode BatchNorm into the preceding conv (float64 maths); adds a bias."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shape = [1] * conv.weight.dim()
    shape[out_axis] = -1
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        conv.weight.copy_(conv.weight.double() * scale.view(shape))
        conv.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + bn.bias.double()).float())


def fold_all_bn(model: nn.Module) -> None:
    """conv -> BN pairs: Sequential/SparseSequential neighbours and the residual blocks' convN/bnN."""
    for name, module in model.named_modules():
        if name == "encoder.conv_input":  # NVIDIA keeps it unfolded (folded only at export)
            continue
        if isinstance(module, nn.Sequential | SparseSequential):
            children = list(module.named_children())
            for (_, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
                if isinstance(conv, CONVS) and isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
                    fold_bn(conv, bn, 1 if isinstance(conv, nn.ConvTranspose2d) else 0)
                    setattr(module, bn_name, nn.Identity())
        if isinstance(module, SparseBasicBlock):
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2")):
                fold_bn(getattr(module, conv_name), getattr(module, bn_name))
                setattr(module, bn_name, nn.Identity())


def quantize_modules(model: nn.Module) -> None:
    """Swap convs for quantized ones (NVIDIA's transfer: new class, same __dict__), blocks and neck."""
    dense = {nn.Conv2d: (quant_nn.QuantConv2d, W_OUT0),
             nn.ConvTranspose2d: (quant_nn.QuantConvTranspose2d, W_OUT1)}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_name}.{name}".lstrip(".")
            if isinstance(child, SparseConvolution) and not path.startswith("encoder.conv_input"):
                quant = QuantSparseConv.__new__(QuantSparseConv)
                quant.__dict__.update(child.__dict__)
                quant._input_quantizer = quant_nn.TensorQuantizer(ACT)
                quant._weight_quantizer = quant_nn.TensorQuantizer(W_OUT0)
                setattr(parent, name, quant)
            elif type(child) in dense and path.startswith("bev."):
                cls, weight_desc = dense[type(child)]
                quant = cls.__new__(cls)
                quant.__dict__.update(child.__dict__)
                quant._input_quantizer = quant_nn.TensorQuantizer(ACT)
                quant._weight_quantizer = quant_nn.TensorQuantizer(weight_desc)
                setattr(parent, name, quant)
    for module in model.modules():
        if type(module) is SparseBasicBlock:
            module.__class__ = QuantBasicBlock
            module._add_quantizer = quant_nn.TensorQuantizer(ACT)
    model.bev.neck.__class__ = QuantSECONDFPN
    model.bev.neck._cat_quantizer = quant_nn.TensorQuantizer(ACT)
    model.bev.head.shared_conv[0]._input_quantizer = model.bev.neck._cat_quantizer  # one scale


def quantizers(model: nn.Module) -> list[quant_nn.TensorQuantizer]:
    """Every distinct TensorQuantizer (shared ones once)."""
    return list({id(m): m for m in model.modules() if isinstance(m, quant_nn.TensorQuantizer)}.values())


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, num_batches: int, method: str = "mse",
              percentile: float = 99.99) -> None:
    """Collect statistics (quantization off), then load amax: max for weights, ``method`` for inputs."""
    for q in quantizers(model):
        q.disable_quant()
        q.enable_calib()
    for index, batch in enumerate(batches):
        if index == num_batches:
            break
        zoo.forward_batch(model, batch)
    for q in quantizers(model):
        q.disable_calib()
        q.enable_quant()
    load_amax(model, method, percentile)


def load_amax(model: nn.Module, method: str, percentile: float = 99.99) -> None:
    """(Re)compute every amax from the collected statistics."""
    for q in quantizers(model):
        if isinstance(q._calibrator, HistogramCalibrator):  # upstream load_calib_amax("mse") needs CUDA
            amax = compute_amax(q._calibrator, method, percentile=percentile)
            q.register_buffer("_amax", amax.detach().clone())
        else:
            q.load_calib_amax()


def disable_full_precision(model: nn.Module) -> None:
    """Switch off the quantizers of the layers that stay in full precision."""
    for path in FULL_PRECISION:
        for q in model.get_submodule(path).modules():
            if isinstance(q, quant_nn.TensorQuantizer):
                q.disable()


def build_quantized(calib_batches: Iterable, num_batches: int, method: str = "mse") -> nn.Module:
    """The whole pipeline: pretrained model -> folded -> quantized -> calibrated -> partly disabled."""
    model = zoo.build(pretrained=True).eval()
    fold_all_bn(model)
    quantize_modules(model)
    calibrate(model, calib_batches, num_batches, method)
    disable_full_precision(model)
    return model
