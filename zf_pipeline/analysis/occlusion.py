"""Occlusion sensitivity (section 4.3, Fig. 5).

A grey square is swept over the image. The images are mean-subtracted, so "grey" (the mean
colour) is 0. For every position of the square we record (b) the total activation of one
layer-5 feature map, the one with the strongest response in the unoccluded image, (d) the
probability of the correct class and (e) the most probable label; (c) is that map's strongest
unit projected to pixels with the deconvnet. Many occluded copies go through the net in one
forward pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zf_pipeline.analysis import evaluating, model_device
from zf_pipeline.deconv import DEFAULT_NORM, Norm, project

logger = logging.getLogger(__name__)


def occlude(images: torch.Tensor, boxes: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Copies of ``images`` with box ``k`` painted ``fill`` in copy ``k``.

    Args:
        images: ``[3, H, W]`` (one image, occluded at every box) or ``[K, 3, H, W]`` (one box each).
        boxes: ``[K, 4]`` integer boxes ``(x0, y0, x1, y1)``, half-open, in pixels of ``images``.
        fill: the occluder's value; 0 is the mean colour of mean-subtracted inputs.
    """
    boxes = torch.as_tensor(boxes, device=images.device).long().view(-1, 4)
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])  # [K, H]
    in_cols = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])  # [K, W]
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [K, 1, H, W]
    base = images.unsqueeze(0) if images.ndim == 3 else images
    return torch.where(mask, torch.as_tensor(fill, dtype=images.dtype, device=images.device), base)


def square_positions(height: int, width: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top rows and left columns of the occluder: every ``stride`` pixels, the square fully inside."""
    if not 0 < size <= min(height, width) or stride <= 0:
        raise ValueError(f"occluder size {size} / stride {stride} do not fit a {height}x{width} image")
    return np.arange(0, height - size + 1, stride), np.arange(0, width - size + 1, stride)


@dataclass
class OcclusionResult:
    """Fig. 5 for one image. Maps are indexed ``[i, j]`` = square at row ``ys[i]``, column ``xs[j]``."""

    label: int  # the correct class
    layer: str  # the layer of the monitored map (layer 5)
    channel: int  # the strongest map of the unoccluded image
    size: int  # side of the square in pixels
    ys: np.ndarray  # top rows of the square positions
    xs: np.ndarray  # left columns of the square positions
    map_activity: np.ndarray  # (b) total activation of ``channel`` per position
    true_prob: np.ndarray  # (d) probability of ``label`` per position
    top_label: np.ndarray  # (e) most probable class per position
    base_activity: float  # unoccluded values of the three
    base_prob: float
    base_label: int
    unit: tuple[int, int]  # (y, x) of the map's maximum in the unoccluded image
    projection: np.ndarray  # (c) [3, H, W] deconvnet projection of that unit

    def rows(self) -> list[dict]:
        """One tidy row per occluder position (centre of the square in pixels)."""
        half = self.size / 2
        return [
            {
                "y": int(y), "x": int(x), "center_y": float(y + half), "center_x": float(x + half),
                "map_activity": float(self.map_activity[i, j]), "true_prob": float(self.true_prob[i, j]),
                "top_label": int(self.top_label[i, j]),
            }
            for i, y in enumerate(self.ys)
            for j, x in enumerate(self.xs)
        ]


def occlusion_sensitivity(
    model: nn.Module,
    image: torch.Tensor,
    label: int,
    size: int = 48,
    stride: int = 8,
    layer: str = "conv5",
    fill: float = 0.0,
    batch_size: int = 256,
    norm: Norm = DEFAULT_NORM,
) -> OcclusionResult:
    """Sweep a ``size`` x ``size`` grey square over ``image`` ([3, H, W], mean-subtracted) with ``stride``.

    ``model`` needs ``forward_layers(x, [layer, "fc8"])`` (a ZFNet). ``batch_size`` occluded
    copies go through the net per forward pass.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    device, dtype = model_device(model)
    image = image.to(device=device, dtype=dtype)
    ys, xs = square_positions(image.shape[1], image.shape[2], size, stride)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    tops = torch.as_tensor(np.stack([grid_x.ravel(), grid_y.ravel()], 1), device=device)
    boxes = torch.cat([tops, tops + size], 1)

    # The unoccluded image rides in the first batch as copy 0 (an empty box), and every map's total is
    # kept until the end: the host never waits for the device before the last batch is queued.
    boxes = torch.cat([boxes.new_zeros((1, 4)), boxes])
    with evaluating(model), torch.no_grad():
        totals, probs = [], []
        for start in range(0, len(boxes), batch_size):
            out = model.forward_layers(occlude(image, boxes[start : start + batch_size], fill), [layer, "fc8"])
            if start == 0:
                base_maps = out[layer][0].float()
            totals.append(out[layer].float().sum((2, 3)))
            probs.append(out["fc8"].float().softmax(1))
            logger.debug("occlusion: %d/%d positions", min(start + batch_size, len(boxes)) - 1, len(boxes) - 1)
        totals, probs = torch.cat(totals), torch.cat(probs)
        # "Strongest response": the map with the largest maximum, as the top-9 mining ranks maps.
        channel = int(base_maps.flatten(1).max(1).values.argmax())
    unit = divmod(int(base_maps[channel].argmax()), base_maps.shape[-1])
    projection = project(model, image[None], layer, [channel], [unit[0]], [unit[1]], norm=norm)[0]
    activity, base_probs = totals[:, channel], probs[0]

    def grid(values: torch.Tensor) -> np.ndarray:
        return values[1:].cpu().numpy().reshape(len(ys), len(xs))

    return OcclusionResult(
        label=label, layer=layer, channel=channel, size=size, ys=ys, xs=xs,
        map_activity=grid(activity), true_prob=grid(probs[:, label]), top_label=grid(probs.argmax(1)),
        base_activity=float(activity[0]), base_prob=float(base_probs[label]),
        base_label=int(base_probs.argmax()), unit=unit, projection=projection.float().cpu().numpy(),
    )


__all__ = ["OcclusionResult", "occlude", "occlusion_sensitivity", "square_positions"]
