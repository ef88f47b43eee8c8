"""Occlusion sensitivity (section 4.3, Fig. 5).

A grey square is swept over the image. The images are mean-subtracted, so "grey" (the mean
colour) is 0. For every position of the square we record (b) the total activation of one
layer-5 feature map, the one with the strongest response in the unoccluded image, (d) the
probability of the correct class and (e) the most probable label; (c) is that map's strongest
unit projected to pixels with the deconvnet. Many occluded copies, of one image or of several
consecutive ones, go through the net in one forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zf_pipeline.analysis import evaluating, model_device
from zf_pipeline.deconv import DEFAULT_NORM, Norm, project

logger = logging.getLogger(__name__)


def occlude(
    images: torch.Tensor, boxes: torch.Tensor, fill: float = 0.0, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Copies of ``images`` with box ``k`` painted ``fill`` in copy ``k``.

    Args:
        images: ``[3, H, W]`` (one image, occluded at every box) or ``[K, 3, H, W]`` (one box each),
            or with ``index``, ``[N, 3, H, W]``.
        boxes: ``[K, 4]`` integer boxes ``(x0, y0, x1, y1)``, half-open, in pixels of ``images``.
        fill: the occluder's value; 0 is the mean colour of mean-subtracted inputs.
        index: ``[K]``, optional: copy ``k`` is of ``images[index[k]]``.
    """
    if index is not None and images.ndim != 4:
        raise ValueError(f"with index, images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    boxes = torch.as_tensor(boxes, device=images.device).long().view(-1, 4)
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])  # [K, H]
    in_cols = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])  # [K, W]
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [K, 1, H, W]
    # A Python fill: a fill tensor made here would be a host-to-device copy, which waits for the device.
    if index is None:
        return torch.where(mask, fill, images.unsqueeze(0) if images.ndim == 3 else images)
    return images[index].masked_fill_(mask, fill)  # the gather is a fresh tensor: paint it in place


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
    """Fig. 5 for one image ([3, H, W], mean-subtracted): :func:`occlusion_sensitivities` of a batch of one."""
    if image.ndim != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    return occlusion_sensitivities(model, image[None], [label], size, stride, layer, fill, batch_size, norm)[0]


def occlusion_sensitivities(
    model: nn.Module,
    images: torch.Tensor,
    labels: Sequence[int],
    size: int = 48,
    stride: int = 8,
    layer: str = "conv5",
    fill: float = 0.0,
    batch_size: int = 256,
    norm: Norm = DEFAULT_NORM,
) -> list[OcclusionResult]:
    """Sweep a ``size`` x ``size`` grey square with ``stride`` over each of ``images`` ([N, 3, H, W],
    mean-subtracted); ``labels[n]`` is the correct class of image ``n``.

    ``model`` needs ``forward_layers(x, [layer, "fc8"])`` (a ZFNet). The occluded copies of all
    images form one stream cut into forward passes of ``batch_size`` copies, so consecutive images
    share batches (only the last one is partial), and the host first waits for the device when
    every pass is queued. Each image's results are those of a call for it alone (up to rounding:
    the device may pick other kernels for other batch sizes).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    classes = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(classes) != len(images):
        raise ValueError(f"{len(images)} images but {len(classes)} labels")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(images) == 0:
        return []
    device, dtype = model_device(model)
    images = images.to(device=device, dtype=dtype)
    ys, xs = square_positions(images.shape[2], images.shape[3], size, stride)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    tops = torch.as_tensor(np.stack([grid_x.ravel(), grid_y.ravel()], 1), device=device)
    # Each image's unoccluded copy (an empty box) goes first, ahead of its occluded copies.
    boxes = torch.cat([tops.new_zeros((1, 4)), torch.cat([tops, tops + size], 1)])
    n, copies = len(images), len(boxes)
    # Everything indexed inside the loop is already on the device: a host-to-device copy would wait for it.
    owner = torch.arange(n, device=device).repeat_interleave(copies)  # image of each copy of the stream
    boxes = boxes.repeat(n, 1)
    first = torch.arange(n, device=device) * copies  # stream index of each image's unoccluded copy
    label_of = torch.as_tensor(classes, device=device)[owner]
    channel = torch.zeros(n, dtype=torch.long, device=device)
    unit = torch.zeros(n, dtype=torch.long, device=device)  # flat index of the map's maximum
    rows = torch.arange(batch_size, device=device)
    activity, true_prob, top_label = [], [], []
    with evaluating(model), torch.no_grad():
        for start in range(0, n * copies, batch_size):
            stop = min(start + batch_size, n * copies)
            out = model.forward_layers(occlude(images, boxes[start:stop], fill, owner[start:stop]), [layer, "fc8"])
            maps, logits = out[layer], out["fc8"]
            if start == 0 and (classes.min() < 0 or classes.max() >= logits.shape[1]):
                raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {classes.min()}..{classes.max()}")
            # Images whose unoccluded copy is in this pass: pick their map ("strongest response": the
            # largest maximum, as the top-9 mining ranks maps) before their occluded copies use it.
            new = slice(-(-start // copies), -(-stop // copies))
            if new.start < new.stop:
                base = maps[first[new] - start].float()
                channel[new] = base.flatten(2).max(2).values.argmax(1)
                unit[new] = base[rows[: len(base)], channel[new]].flatten(1).argmax(1)
            k = rows[: stop - start]
            activity.append(maps[k, channel[owner[start:stop]]].float().sum((1, 2)))
            probs = logits.float().softmax(1)
            true_prob.append(probs[k, label_of[start:stop]])
            top_label.append(probs.argmax(1))
            logger.debug("occlusion: %d/%d copies", stop, n * copies)
    width = maps.shape[-1]
    unit_y, unit_x = unit // width, unit % width
    projections = project(model, images, layer, channel, unit_y, unit_x, norm=norm)
    per_image = [torch.cat(v).view(n, copies).cpu().numpy() for v in (activity, true_prob, top_label)]
    channel, unit_y, unit_x = (t.tolist() for t in (channel, unit_y, unit_x))
    projections = projections.float().cpu().numpy()

    def grid(values: np.ndarray) -> np.ndarray:
        return values[1:].reshape(len(ys), len(xs))

    return [
        OcclusionResult(
            label=int(classes[i]), layer=layer, channel=channel[i], size=size, ys=ys, xs=xs,
            map_activity=grid(act), true_prob=grid(prob), top_label=grid(top),
            base_activity=float(act[0]), base_prob=float(prob[0]), base_label=int(top[0]),
            unit=(unit_y[i], unit_x[i]), projection=projections[i],
        )
        for i, (act, prob, top) in enumerate(zip(*per_image))
    ]


__all__ = ["OcclusionResult", "occlude", "occlusion_sensitivities", "occlusion_sensitivity", "square_positions"]
