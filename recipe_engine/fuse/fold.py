"""BatchNorm folding maths, in float64, for dense and sparse convolutions and linear layers.

For a conv ``y = W x + b`` followed by BN ``z = gamma (y - mean) / sqrt(var + eps) + beta``
the folded layer is ``W' = W s`` and ``b' = (b - mean) s + beta`` with
``s = gamma / sqrt(var + eps)`` applied per *output* channel. The output-channel axis of the
weight depends on the layer: 0 for Conv/Linear/spconv ([O, k.., I]), and for ConvTranspose
the weight is [I, O/groups, k..] so the scale runs along axis 1 within each group. spconv's
kernel-size-1 layers compute ``features @ weight.view(I, O)``: the scale runs along axis 1 of
that view.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import backend, sparse
from ..recipe.errors import RecipeError

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _BATCHNORMS)


def is_foldable_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, *_TRANSPOSED)) or \
        sparse.is_sparse_conv(module)


def out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels


def _check_bn(bn: nn.Module, name: str, allow_training: bool) -> None:
    if bn.training and not allow_training:
        raise RecipeError(f"cannot fold {name or 'BatchNorm'}: it is in training mode",
                          hint="call model.eval() first, or set `with: {allow_training: true}` on the fuse entry")
    if bn.running_mean is None or bn.running_var is None:
        raise RecipeError(f"cannot fold {name or 'BatchNorm'}: it has no running statistics "
                          "(track_running_stats=False)", hint="BN without running stats cannot be folded")


def bn_scale_shift(bn: nn.Module, name: str = "", allow_training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode BN, in float64."""
    _check_bn(bn, name, allow_training)
    return _scale_shift_many([bn])[0]


def _scale_shift_many(bns: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`bn_scale_shift` of many BNs, computed on their concatenated statistics (per device): the same
    element-wise float64 maths, in a dozen tensor ops for all of them instead of a dozen each."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(bns)
    by_device: dict[torch.device, list[int]] = {}
    for i, bn in enumerate(bns):
        by_device.setdefault(bn.running_var.device, []).append(i)
    with torch.no_grad():
        for indices in by_device.values():
            group = [bns[i] for i in indices]

            def stacked(pick, fill: float, group=group) -> torch.Tensor:
                parts = [pick(bn) if pick(bn) is not None else torch.full_like(bn.running_var, fill) for bn in group]
                return (torch.cat(parts) if len(parts) > 1 else parts[0]).double()

            var, mean = stacked(lambda b: b.running_var, 0.0), stacked(lambda b: b.running_mean, 0.0)
            gamma, beta = stacked(lambda b: b.weight, 1.0), stacked(lambda b: b.bias, 0.0)
            eps = torch.cat([torch.full((bn.num_features,), float(bn.eps), dtype=torch.float64, device=var.device)
                             for bn in group]) if len({bn.eps for bn in group}) > 1 else group[0].eps
            scale = gamma / torch.sqrt(var + eps)
            shift = beta - mean * scale
            sizes = [bn.running_var.numel() for bn in group]
            for i, s, t in zip(indices, scale.split(sizes), shift.split(sizes), strict=True):
                out[i] = (s, t)
    return out  # type: ignore[return-value]


def _scale_weight(layer: nn.Module, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, _TRANSPOSED):
        groups = layer.groups
        in_ch, out_per_group = weight.shape[0], weight.shape[1]
        grouped = weight.reshape(groups, in_ch // groups, out_per_group, *weight.shape[2:])
        factor = scale.reshape(groups, 1, out_per_group, *([1] * (weight.dim() - 2)))
        return (grouped * factor).reshape(weight.shape)
    if sparse.is_conv1x1(layer):
        return (sparse.weight_matrix_1x1(layer, weight) * scale.reshape(1, -1)).reshape(weight.shape)
    return weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))


def fold_batchnorm(layer: nn.Module, bn: nn.Module, *, name: str = "", allow_training: bool = False) -> None:
    """Fold ``bn`` into ``layer`` in place (parameters keep their identity; a bias is added if missing)."""
    fold_batchnorms([(layer, bn, name)], allow_training=allow_training)


def fold_batchnorms(pairs: list[tuple[nn.Module, nn.Module, str]], *, allow_training: bool = False) -> None:
    """:func:`fold_batchnorm` for each ``(layer, bn, name)`` in order, the BN maths of all of them at once.

    Every pair is checked before any is folded; the layers are then updated one by one in order (a layer
    listed twice folds twice, as with repeated calls). The numbers are those of one call per pair.
    """
    for layer, bn, name in pairs:
        if bn.num_features != out_channels(layer):
            raise RecipeError(f"cannot fold {name}: BN has {bn.num_features} features, the layer "
                              f"{out_channels(layer)} output channels")
        _check_bn(bn, name, allow_training)
    for (layer, _bn, name), (scale, shift) in zip(pairs, _scale_shift_many([p[1] for p in pairs]), strict=True):
        weight = layer.weight
        with torch.no_grad():  # (instead of detach(): each tiny op counts at 10k modules)
            folded = _scale_weight(layer, weight.double(), scale)
            new_bias = layer.bias.double() * scale + shift if layer.bias is not None else shift
            weight.copy_(folded)  # copy_ rounds float64 to the parameter's dtype, as .to() does
            if layer.bias is not None:
                layer.bias.copy_(new_bias)
            else:
                layer.bias = nn.Parameter(new_bias.to(dtype=weight.dtype, device=weight.device, copy=True),
                                          requires_grad=weight.requires_grad)  # (copy: shift is a view)
        _rescale_weight_amax(layer, scale, name)
        if sparse.is_sparse_conv(layer):
            _make_cpu_safe(layer)


def _rescale_weight_amax(layer: nn.Module, scale: torch.Tensor, name: str) -> None:
    """Keep a calibrated per-channel weight amax consistent with the folded weight."""
    quantizer = backend.module_quantizer(layer, "weight")
    amax = backend.get_amax(quantizer) if quantizer is not None else None
    if amax is None:
        return
    if amax.numel() != scale.numel():
        raise RecipeError(f"cannot fold {name} after calibration: its weight quantizer is per tensor",
                          hint="fold before calibration (phase: before_calibration) or use per_channel weights")
    with torch.no_grad():
        backend.set_amax(quantizer, (amax.double() * scale.abs().reshape(amax.shape)).to(amax.dtype))


def _make_cpu_safe(layer: nn.Module) -> None:
    """A biased spconv conv must apply its bias in PyTorch on CPU: give it the engine's forward."""
    if not isinstance(layer, sparse.QuantSparseConvMixin):
        sparse.swap_sparse_module(layer, None, None)


def fold_relu_into_sparse(layer: nn.Module) -> None:
    """Set a spconv conv's fused activation to ReLU (applied by the engine's sparse forward)."""
    import cumm.tensorview as tv
    from spconv.pytorch.conv import SparseConvolution  # noqa: F401 - only reached with spconv present

    layer.act_type = tv.gemm.Activation.ReLU
    _make_cpu_safe(layer)
