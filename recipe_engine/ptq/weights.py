"""Weight layouts, integer grids and fresh amax values for the PTQ steps.

- :func:`weight_view`: the tensor a layer's weight quantizer sees. That is ``module.weight``
  except for spconv 2.3.8's kernel-size-1 layers, which compute ``features @ weight.reshape(I, O)``:
  their quantizer sees that ``[I, O]`` matrix (output channels on axis 1).
- :func:`oi_view` / :func:`from_oi`: any supported weight as ``[O, I, K]`` (output channel, input
  channel, kernel positions) and back, for the algorithms that scale channels (CLE).
- :class:`Grid`: the integer grid of a calibrated weight quantizer (``scale = amax / max_bound``
  per channel, bounds from the quantizer's bits, sign and narrow range), as the libraries compute it.
- :func:`fresh_amax`: an amax computed from scratch from tensors with the quantizer's own method
  (max, or a histogram and the recipe's entropy/mse/percentile search), not accumulated onto the
  statistics calibration left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..calib.methods import amax_from_statistics
from ..quant import backend, sparse


def layout(module: nn.Module) -> str | None:
    """How a layer's weight is laid out: ``linear`` [O, I], ``conv`` [O, I/g, k..], ``transposed``
    [I, O/g, k..], ``sparse`` [O, k.., I], ``sparse1x1`` (spconv computes ``x @ weight.reshape(I, O)``);
    None for anything else. Works on the float modules and on every backend's quantized classes."""
    if sparse.is_sparse_conv(module):
        return "sparse1x1" if sparse.is_conv1x1(module) else "sparse"
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or backend.dense_info(module) is None and not isinstance(
            module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                     nn.ConvTranspose3d)):
        return None
    if weight.dim() == 2:
        return "linear"
    return "transposed" if backend.weight_channel_axis(module) == 1 else "conv"


def weight_view(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (shaped like ``module.weight``) as its weight quantizer sees it."""
    return sparse.weight_matrix_1x1(module, weight) if sparse.is_conv1x1(module) else weight


def from_view(module: nn.Module, view: torch.Tensor) -> torch.Tensor:
    return view.reshape(module.weight.shape)


def supports_oi(module: nn.Module) -> bool:
    """Layers whose weight :func:`oi_view` can lay out (ConvTranspose with groups > 1 cannot)."""
    kind = layout(module)
    return kind is not None and not (kind == "transposed" and getattr(module, "groups", 1) != 1)


def oi_view(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as ``[O, I / groups, K]``."""
    kind = layout(module)
    if kind == "linear":
        return weight[:, :, None]
    if kind == "transposed":
        return weight.transpose(0, 1).reshape(weight.shape[1], weight.shape[0], -1)
    if kind == "sparse1x1":
        return sparse.weight_matrix_1x1(module, weight).t()[:, :, None]
    if kind == "sparse":  # spconv 2.x [O, k.., I]
        return weight.reshape(weight.shape[0], -1, weight.shape[-1]).transpose(1, 2)
    return weight.reshape(weight.shape[0], weight.shape[1], -1)


def from_oi(module: nn.Module, view: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`oi_view`: a tensor shaped like ``like`` (the module's weight)."""
    kind = layout(module)
    if kind == "linear":
        return view[:, :, 0].reshape(like.shape)
    if kind == "transposed":
        out_c, in_c = like.shape[1], like.shape[0]
        return view.reshape(out_c, in_c, *like.shape[2:]).transpose(0, 1).reshape(like.shape)
    if kind == "sparse1x1":
        return view[:, :, 0].t().reshape(like.shape)
    if kind == "sparse":
        return view.transpose(1, 2).reshape(like.shape)
    return view.reshape(like.shape)


def _axis(info: dict) -> int | None:
    axis = info.get("axis")
    if isinstance(axis, (tuple, list)):
        if len(axis) != 1:
            raise ValueError(f"quantizer axis {axis} is not one channel axis")
        axis = axis[0]
    return axis


def int_bounds(info: dict) -> tuple[float, float]:
    """(min, max) integer of a quantizer: signed ``[-2^(b-1), 2^(b-1)-1]`` (narrow: from ``-max``), unsigned ``[0, 2^b-1]``."""
    bits = int(info["num_bits"])
    if info.get("unsigned"):
        return 0.0, float(2 ** bits - 1)
    top = float(2 ** (bits - 1) - 1)
    return (-top if info.get("narrow_range") else -top - 1), top


def broadcast_amax(amax: torch.Tensor, like: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``amax`` shaped to broadcast over ``like`` (one value, or one per index of ``axis``)."""
    amax = torch.as_tensor(amax).detach().to(like.device, torch.float32)
    if amax.numel() == 1:
        return amax.reshape(())
    if axis is None:
        raise ValueError(f"a per-channel amax ({amax.numel()} values) without a quantizer axis")
    shape = [1] * like.dim()
    shape[axis] = -1
    return amax.reshape(shape)


@dataclass
class Grid:
    """The integer grid of a weight quantizer, over :func:`weight_view`."""

    scale: torch.Tensor  # broadcast over the view
    qmin: float
    qmax: float

    def integers(self, view: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(view / self.scale), self.qmin, self.qmax)

    def nearest(self, view: torch.Tensor) -> torch.Tensor:
        return self.integers(view) * self.scale


def weight_grid(module: nn.Module) -> Grid:
    """The grid of ``module``'s calibrated weight quantizer."""
    quantizer = backend.module_quantizer(module, "weight")
    amax = backend.get_amax(quantizer) if quantizer is not None else None
    if amax is None:
        raise ValueError("the weight quantizer has no amax (calibrate first)")
    info = backend.describe(quantizer)
    qmin, qmax = int_bounds(info)
    view = weight_view(module, module.weight.detach())
    return Grid(broadcast_amax(amax, view, _axis(info)) / qmax, qmin, qmax)


def _abs_max(tensors: Sequence[torch.Tensor], axis: int | None) -> torch.Tensor:
    values = []
    for tensor in tensors:
        t = tensor.detach().abs().float()
        if axis is None:
            values.append(t.amax())
        else:
            dims = [d for d in range(t.dim()) if d != axis % t.dim()]
            values.append(t.amax(dim=dims) if dims else t)
    return torch.stack(values).amax(dim=0)


def fresh_amax(quantizer: nn.Module, tensors: Sequence[torch.Tensor], method: str, calibration) -> torch.Tensor:
    """The amax ``quantizer`` gets for ``tensors`` with ``method`` (histogram methods need a histogram
    calibrator and a per-tensor quantizer; otherwise max), computed from these tensors only."""
    info = backend.describe(quantizer)
    axis = _axis(info)
    if info["calibrator"] != "histogram" or method == "max" or axis is not None:
        return _abs_max(tensors, axis)
    stats = histogram(tensors, int(getattr(calibration, "num_bins", 2048)), getattr(calibration, "skip_zeros", False))
    return amax_from_statistics(stats, method, int(info["num_bits"]), bool(info["unsigned"]), calibration)


def histogram(tensors: Sequence[torch.Tensor], bins: int, skip_zeros: bool = False) -> dict[str, torch.Tensor]:
    """``{"hist", "edges"}`` of ``|tensors|`` over ``[0, max]``, as the histogram calibrators keep them."""
    top = float(_abs_max(tensors, None))
    hist = torch.zeros(bins, dtype=torch.float64)
    for tensor in tensors:
        values = tensor.detach().abs().float().flatten()
        if skip_zeros:
            values = values[values != 0]
        hist += torch.histc(values, bins=bins, min=0.0, max=top).double()
    return {"hist": hist, "edges": torch.linspace(0.0, top, bins + 1)}


def refresh_statistics(quantizer: nn.Module, seen: Sequence[torch.Tensor], calibration) -> None:
    """Replace ``quantizer``'s calibration statistics by those of ``seen`` (what it reads after a step
    changed its input); the report's histograms and clipping figures read them."""
    stats = backend.calibration_statistics(quantizer)
    if not stats:
        return
    if "hist" in stats:
        fresh = histogram(seen, int(stats["hist"].numel()), getattr(calibration, "skip_zeros", False))
    else:
        fresh = {"amax": torch.stack([x.detach().abs().amax() for x in seen]).amax().to(stats["amax"])}
    backend.load_calibration_statistics(quantizer, {**stats, **fresh})
