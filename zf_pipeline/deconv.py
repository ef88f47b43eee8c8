"""The deconvnet of section 2.1: project one activation of a convnet back to pixel space.

Going up, the convnet records what the way down needs: the switches (the argmax of every
pooling region) and, for the ``gradient`` normalization, the input of each contrast
normalization. Going down from a single activation (all others in its layer set to zero),
each layer in reverse order is inverted by

* unpooling (``nn.MaxPool2d``): put each value at its recorded switch. ZFNet's 3x3 / stride-2
  pools overlap, so two regions can share a maximum; their contributions must be ADDED at
  that position (``scatter_add``). ``nn.MaxUnpool2d`` writes instead of adding and loses one
  of them (a projection from pool5 can come out all zero).
* rectifying (``nn.ReLU``): relu of the signal itself. There is no mask from the forward
  pass; with one, the method would be guided backpropagation, not the deconvnet.
* filtering (``nn.Conv2d``): the transposed filters, ``conv_transpose2d`` with the layer's own
  weights, stride and padding and no bias.
* contrast normalization (``nn.LocalResponseNorm``): the paper does not say. ``identity``
  (the default) passes the signal through, so every layer is inverted by exactly the paper's
  three operations; ``gradient`` multiplies by the transposed Jacobian of the normalization
  at the recorded input, as autograd would. See docs/deconvnet.md.

Many seeds (image, channel, y, x) of one layer go down together as one batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from zf_pipeline.models.zfnet import CONV_LAYERS, LAYER_OUTPUT

logger = logging.getLogger(__name__)

Norm = Literal["identity", "gradient"]
NORMS: tuple[str, ...] = ("identity", "gradient")
DEFAULT_NORM: Norm = "identity"


@dataclass
class _Record:
    """What the way up leaves for the way down at one module (switches, or a normalization's input)."""

    name: str
    module: nn.Module
    input_shape: torch.Size
    switches: torch.Tensor | None = None  # pool: flat argmax index into each input plane
    input: torch.Tensor | None = None  # contrast normalization: its input (gradient mode only)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _down_path(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """The modules from the input up to the one whose output is ``layer``'s activation."""
    if layer not in CONV_LAYERS:
        raise ValueError(f"the deconvnet projects convolutional layers {CONV_LAYERS}, not {layer!r}")
    target = LAYER_OUTPUT[layer]
    path: list[tuple[str, nn.Module]] = []
    for name, module in model.named_children():
        path.append((name, module))
        if name == target:
            return path
    raise KeyError(f"layer {layer!r} (module {target!r}) is not in this network")


def _check_invertible(path: list[tuple[str, nn.Module]]) -> None:
    for name, module in path:
        if isinstance(module, nn.MaxPool2d) and (module.dilation not in (1, (1, 1))):
            raise ValueError(f"module {name!r}: dilated max pooling is not supported by the deconvnet")
        if not isinstance(module, (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.LocalResponseNorm, nn.Identity)):
            raise TypeError(
                f"module {name!r} ({type(module).__name__}) has no deconvnet inverse; expected Conv2d, ReLU, "
                "MaxPool2d, LocalResponseNorm or Identity below a conv layer"
            )


def _up(path: list[tuple[str, nn.Module]], x: torch.Tensor, norm: Norm) -> tuple[torch.Tensor, list[_Record]]:
    """Forward pass recording switches (and normalization inputs); returns the layer's activation."""
    records: list[_Record] = []
    for name, module in path:
        rec = _Record(name, module, x.shape)
        if isinstance(module, nn.MaxPool2d):
            x, rec.switches = F.max_pool2d(
                x, module.kernel_size, module.stride, module.padding, module.dilation,
                ceil_mode=module.ceil_mode, return_indices=True,
            )
        else:
            if isinstance(module, nn.LocalResponseNorm) and norm == "gradient":
                rec.input = x
            x = module(x)
        records.append(rec)
    return x, records


def _unpool(signal: torch.Tensor, switches: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """Place each value at its switch, summing where overlapping pooling regions share one."""
    n, c = signal.shape[:2]
    out = signal.new_zeros(n, c, input_shape[-2] * input_shape[-1])
    out.scatter_add_(2, switches.flatten(2), signal.flatten(2))
    return out.view(n, c, input_shape[-2], input_shape[-1])


def _filter(signal: torch.Tensor, conv: nn.Conv2d, input_shape: torch.Size) -> torch.Tensor:
    """Transposed filtering with the layer's weights (no bias), sized back to the layer's input."""
    stride, padding, dilation = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
    kernel = _pair(conv.kernel_size)
    # Strided convolutions drop up to stride-1 trailing rows/cols; output_padding puts them back.
    output_padding = tuple(
        input_shape[-2 + i]
        - ((signal.shape[-2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
        for i in range(2)
    )
    return F.conv_transpose2d(
        signal, conv.weight, None, stride, padding, output_padding, conv.groups, dilation
    )


def _unnormalize(signal: torch.Tensor, rec: _Record, norm: Norm) -> torch.Tensor:
    if norm == "identity":
        return signal
    # Also under a caller's inference_mode: a clone made outside it is an ordinary tensor.
    with torch.inference_mode(False), torch.enable_grad():
        x = rec.input.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(rec.module(x), x, signal.clone())
    return grad


def _down(signal: torch.Tensor, records: list[_Record], norm: Norm) -> torch.Tensor:
    for rec in reversed(records):
        m = rec.module
        if isinstance(m, nn.ReLU):
            signal = F.relu(signal)
        elif isinstance(m, nn.MaxPool2d):
            signal = _unpool(signal, rec.switches, rec.input_shape)
        elif isinstance(m, nn.Conv2d):
            signal = _filter(signal, m, rec.input_shape)
        elif isinstance(m, nn.LocalResponseNorm):
            signal = _unnormalize(signal, rec, norm)
    return signal


def _as_long(v: torch.Tensor | list[int] | tuple[int, ...], name: str, n: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.long).flatten().cpu()  # small; indexes CPU or device images alike
    if n is not None and t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, expected {n} (one per seed)")
    return t


def _check_inside(shape: torch.Size, layer: str, *coords: torch.Tensor) -> None:
    for size, name, v in zip(shape, ("channel", "y", "x"), coords):
        if int(v.min()) < 0 or int(v.max()) >= size:
            raise IndexError(f"a seed's {name} lies outside {layer}'s activation map of shape {tuple(shape)}")


def project(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    channels: torch.Tensor | list[int],
    ys: torch.Tensor | list[int],
    xs: torch.Tensor | list[int],
    image_index: torch.Tensor | list[int] | None = None,
    norm: Norm = DEFAULT_NORM,
    seed: Literal["activation", "one"] | torch.Tensor = "activation",
    batch_size: int = 128,
) -> torch.Tensor:
    """Project single activations of ``layer`` down to pixel space with the deconvnet.

    Seed ``k`` is unit (``channels[k]``, ``ys[k]``, ``xs[k]``) of ``layer``'s activation map
    (the rectified output, see ``LAYER_OUTPUT``) for image ``images[image_index[k]]``.

    Args:
        model: a ZFNet (or any ``nn.Sequential``-like model with the same named modules).
        images: preprocessed network inputs, ``[B, 3, H, W]``; may stay on the CPU, chunks
            are moved to the model's device.
        layer: one of ``conv1`` ... ``conv5`` present in the model.
        channels, ys, xs: the unit of each seed, ``N`` entries each.
        image_index: the image of each seed (``N`` entries); default ``arange(N)`` with ``B == N``.
        norm: how contrast normalization is inverted, ``identity`` (default) or ``gradient``.
        seed: the value put at the unit: the activation itself (``activation``, the paper's
            choice), ``one``, or a tensor of ``N`` values.
        batch_size: seeds per pass down (bounds memory).

    Returns:
        ``[N, 3, H, W]`` projections on the model's device, in the dtype of the model.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    path = _down_path(model, layer)
    _check_invertible(path)
    channels = _as_long(channels, "channels")
    n = channels.numel()
    ys, xs = _as_long(ys, "ys", n), _as_long(xs, "xs", n)
    if image_index is None:
        if images.shape[0] != n:
            raise ValueError(f"without image_index, images must hold one image per seed ({n}), got {images.shape[0]}")
        image_index = torch.arange(n)
    image_index = _as_long(image_index, "image_index", n)
    if isinstance(seed, torch.Tensor):
        seed = seed.flatten()
        if seed.numel() != n:
            raise ValueError(f"seed has {seed.numel()} values, expected {n} (one per seed)")
    elif seed not in ("activation", "one"):
        raise ValueError(f"seed must be 'activation', 'one' or a tensor, got {seed!r}")

    param = next(model.parameters())
    out = torch.empty(n, *images.shape[1:], device=param.device, dtype=param.dtype)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        # Go up once per distinct image of the chunk, then gather per seed.
        uniq, inverse = torch.unique(image_index[sl], return_inverse=True)
        x = images[uniq].to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            act, records = _up(path, x, norm)
            inverse = inverse.to(param.device)
            for rec in records:
                if rec.switches is not None:
                    rec.switches = rec.switches[inverse]
                if rec.input is not None:
                    rec.input = rec.input[inverse]
                rec.input_shape = torch.Size((inverse.numel(), *rec.input_shape[1:]))
            _check_inside(act.shape[1:], layer, channels[sl], ys[sl], xs[sl])  # on the CPU copies: no device sync
            c, y, xx = (t[sl].to(param.device) for t in (channels, ys, xs))
            k = torch.arange(c.numel(), device=param.device)
            signal = torch.zeros(c.numel(), *act.shape[1:], device=param.device, dtype=param.dtype)
            if isinstance(seed, torch.Tensor):
                value = seed[sl].to(device=param.device, dtype=param.dtype)
            elif seed == "one":
                value = torch.ones(c.numel(), device=param.device, dtype=param.dtype)
            else:
                value = act[inverse, c, y, xx]
            signal[k, c, y, xx] = value
            out[sl] = _down(signal, records, norm)
        logger.debug("projected %d/%d seeds of %s", min(start + batch_size, n), n, layer)
    return out


def strongest_units(
    model: nn.Module, images: torch.Tensor, layer: str, channels: torch.Tensor | list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each ``images[k]`` and ``channels[k]``: (value, y, x) of that map's maximum.

    ``images`` is ``[N, 3, H, W]`` (one image per entry of ``channels``).
    """
    param = next(model.parameters())
    channels = _as_long(channels, "channels", images.shape[0]).to(param.device)
    path = _down_path(model, layer)
    with torch.no_grad():
        x = images.to(device=param.device, dtype=param.dtype)
        for _, module in path:
            x = module(x)
        maps = x[torch.arange(x.shape[0], device=param.device), channels].flatten(1)
        value, flat = maps.max(dim=1)
    return value, flat // x.shape[-1], flat % x.shape[-1]


def project_top(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    channels: torch.Tensor | list[int],
    norm: Norm = DEFAULT_NORM,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project the strongest unit of map ``channels[k]`` in image ``images[k]``.

    Returns ``(projections [N, 3, H, W], values [N], ys [N], xs [N])``.
    """
    channels = _as_long(channels, "channels", images.shape[0])
    parts = []
    for start in range(0, images.shape[0], batch_size):
        chunk, ch = images[start : start + batch_size], channels[start : start + batch_size]
        value, y, x = strongest_units(model, chunk, layer, ch)
        parts.append((project(model, chunk, layer, ch, y, x, norm=norm, batch_size=batch_size), value, y, x))
    return tuple(torch.cat(column) for column in zip(*parts))


__all__ = ["DEFAULT_NORM", "NORMS", "Norm", "project", "project_top", "strongest_units"]
