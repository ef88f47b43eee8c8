"""Evolution of features through training (section 4.1, Fig. 3).

For each kept checkpoint, the strongest activation of each chosen feature map over a whole
image set is found and projected to pixels with the deconvnet; Fig. 3 shows one column per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zf_pipeline.analysis import evaluating, model_device
from zf_pipeline.deconv import DEFAULT_NORM, Norm, project

logger = logging.getLogger(__name__)

# The epochs that Fig. 3 shows, where the run kept a checkpoint.
PAPER_EPOCHS: tuple[int, ...] = (1, 2, 5, 10, 20, 30, 40, 64)


@dataclass
class Strongest:
    """For each chosen map: its largest activation over the image set and where it occurred."""

    channels: list[int]
    values: torch.Tensor  # [C]
    image_index: torch.Tensor  # [C] position of the image in the iteration order
    ys: torch.Tensor  # [C]
    xs: torch.Tensor  # [C]
    images: torch.Tensor  # [C, 3, H, W] the image of each maximum (to project it)


def strongest_over(model: nn.Module, batches: Iterable[torch.Tensor], layer: str, channels: Sequence[int]) -> Strongest:
    """Scan ``batches`` of images ([B, 3, H, W]) once, keeping each chosen map's strongest unit and its image."""
    device, dtype = model_device(model)
    channels = list(channels)
    ch = torch.as_tensor(channels, device=device)
    best = None
    seen = 0
    with evaluating(model), torch.no_grad():
        for batch in batches:
            batch = batch.to(device=device, dtype=dtype)
            maps = model.forward_layers(batch, [layer])[layer][:, ch].float()  # [B, C, h, w]
            value, flat = maps.flatten(2).max(2)  # [B, C]
            top, which = value.max(0)  # [C]
            cand = (top, which + seen, flat[which, torch.arange(len(channels), device=device)], batch[which])
            if best is None:
                best = list(cand)
            else:
                better = cand[0] > best[0]
                best = [torch.where(better.view(-1, *[1] * (c.ndim - 1)), c, b) for c, b in zip(cand, best)]
            seen += batch.shape[0]
    if best is None:
        raise ValueError("strongest_over: the image set is empty")
    width = maps.shape[-1]
    return Strongest(channels, best[0], best[1], best[2] // width, best[2] % width, best[3])


@dataclass
class Evolution:
    """Fig. 3 for one layer: projections ``[C, E, 3, H, W]``, map-major, one column per epoch."""

    layer: str
    channels: list[int]
    epochs: list[int]
    projections: torch.Tensor
    values: torch.Tensor  # [C, E]
    ys: torch.Tensor  # [C, E]
    xs: torch.Tensor  # [C, E]


def feature_evolution(
    checkpoints: Iterable[tuple[int, nn.Module]],
    batches: Callable[[], Iterable[torch.Tensor]],
    maps: Mapping[str, Sequence[int]],
    norm: Norm = DEFAULT_NORM,
) -> dict[str, Evolution]:
    """For each ``(epoch, model)``, project the strongest activation of each map in ``maps[layer]``.

    Each checkpoint is visited once for all layers (a full-size checkpoint is 0.8 GB to load).
    ``batches()`` must yield the same images in the same order on every call.
    """
    epochs: list[int] = []
    columns: dict[str, list] = {layer: [] for layer in maps}
    for epoch, model in checkpoints:
        epochs.append(epoch)
        for layer, channels in maps.items():
            s = strongest_over(model, batches(), layer, channels)
            proj = project(model, s.images, layer, s.channels, s.ys, s.xs, norm=norm).float()
            columns[layer].append([t.cpu() for t in (proj, s.values, s.ys, s.xs)])
            logger.info("feature evolution: %s at epoch %d projected", layer, epoch)
    if not epochs:
        raise ValueError("feature_evolution: no checkpoints given")
    out = {}
    for layer, channels in maps.items():
        projections, values, ys, xs = (torch.stack(column, 1) for column in zip(*columns[layer]))
        out[layer] = Evolution(layer, list(channels), epochs, projections, values, ys, xs)
    return out


__all__ = ["PAPER_EPOCHS", "Evolution", "Strongest", "feature_evolution", "strongest_over"]
