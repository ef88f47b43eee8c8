"""Invariance to vertical translation, scale and rotation (section 4.2, Fig. 4).

Each sample image is transformed by a sweep of amounts; at each amount we measure the
Euclidean distance between the feature vectors of the transformed and the original image at
layers 1 and 7, and the probability of the true class.

The distance needs vectors of one length, so every transform keeps the canvas: the image is
moved, scaled about its centre or rotated about its centre inside its own H x W frame, with
bilinear interpolation; what is cut off is dropped and what is uncovered is filled with 0,
the mean colour of mean-subtracted inputs. Scaling up is thus a zoom (a centre crop of the
enlarged image), as when the paper's transformed images are cropped back to the net's input.
Layer 1's vector is the whole rectified conv1 map, flattened.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from zf_pipeline.analysis import evaluating, model_device

logger = logging.getLogger(__name__)

TRANSFORMS: tuple[str, ...] = ("translation", "scale", "rotation")

# The sweeps of Fig. 4: vertical shifts of -60..60 pixels, scale 1..1.8, rotation 0..350 degrees.
PAPER_AMOUNTS: dict[str, tuple[float, ...]] = {
    "translation": tuple(float(t) for t in range(-60, 61, 10)),
    "scale": tuple(float(s) for s in np.round(np.linspace(1.0, 1.8, 9), 2)),
    "rotation": tuple(float(a) for a in range(0, 360, 10)),
}


def transform(images: torch.Tensor, kind: str, amount: float) -> torch.Tensor:
    """``images`` ([..., 3, H, W]) translated down by ``amount`` pixels, scaled by ``amount`` or
    rotated by ``amount`` degrees (counter-clockwise), inside the same frame, uncovered pixels 0."""
    if kind == "translation":
        args = dict(angle=0.0, translate=[0.0, float(amount)], scale=1.0)
    elif kind == "scale":
        if amount <= 0:
            raise ValueError(f"scale factor must be positive, got {amount}")
        args = dict(angle=0.0, translate=[0.0, 0.0], scale=float(amount))
    elif kind == "rotation":
        args = dict(angle=float(amount), translate=[0.0, 0.0], scale=1.0)
    else:
        raise ValueError(f"unknown transform {kind!r}; expected one of {TRANSFORMS}")
    return TF.affine(images, shear=[0.0, 0.0], interpolation=TF.InterpolationMode.BILINEAR, fill=0.0, **args)


@dataclass
class InvarianceResult:
    """One transform's sweep: curves indexed ``[image, amount]``."""

    transform: str
    amounts: np.ndarray  # [A]
    image_ids: list[str]  # [N]
    labels: np.ndarray  # [N] true classes
    distance: dict[str, np.ndarray]  # layer -> [N, A] Euclidean distance to the untransformed features
    true_prob: np.ndarray  # [N, A] probability of the true class

    def rows(self) -> list[dict]:
        """Tidy rows: transform, amount, image_id, measure ('distance_<layer>' or 'true_prob'), value."""
        measures = {f"distance_{layer}": d for layer, d in self.distance.items()} | {"true_prob": self.true_prob}
        return [
            {
                "transform": self.transform,
                "amount": float(a),
                "image_id": image_id,
                "measure": measure,
                "value": float(v[i, k]),
            }
            for measure, v in measures.items()
            for i, image_id in enumerate(self.image_ids)
            for k, a in enumerate(self.amounts)
        ]


def invariance_sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: Sequence[int],
    kind: str,
    amounts: Sequence[float] | None = None,
    layers: Sequence[str] = ("conv1", "fc7"),
    image_ids: Sequence[str] | None = None,
) -> InvarianceResult:
    """Fig. 4 curves for ``images`` ([N, 3, H, W], mean-subtracted) under one transform ``kind``.

    ``amounts`` default to the paper's sweep (:data:`PAPER_AMOUNTS`); ``model`` needs
    ``forward_layers`` (a ZFNet). Each amount is one forward pass of the N transformed images.
    """
    amounts = np.asarray(PAPER_AMOUNTS[kind] if amounts is None else amounts, dtype=float)
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    if labels_t.numel() != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels_t.numel()} labels")
    ids = [str(i) for i in range(images.shape[0])] if image_ids is None else [str(i) for i in image_ids]
    device, dtype = model_device(model)
    images = images.to(device=device, dtype=dtype)
    wanted = list(dict.fromkeys([*layers, "fc8"]))
    rows = torch.arange(images.shape[0], device=device)
    with evaluating(model), torch.no_grad():
        base = model.forward_layers(images, wanted)
        distance = {layer: np.empty((images.shape[0], len(amounts))) for layer in layers}
        true_prob = np.empty((images.shape[0], len(amounts)))
        for k, amount in enumerate(amounts):
            out = model.forward_layers(transform(images, kind, amount), wanted)
            for layer in layers:
                diff = (out[layer].float() - base[layer].float()).flatten(1)
                distance[layer][:, k] = diff.norm(dim=1).cpu().numpy()
            true_prob[:, k] = out["fc8"].float().softmax(1)[rows, labels_t.to(device)].cpu().numpy()
            logger.debug("invariance %s: amount %g done", kind, amount)
    return InvarianceResult(kind, amounts, ids, labels_t.numpy(), distance, true_prob)


__all__ = ["InvarianceResult", "PAPER_AMOUNTS", "TRANSFORMS", "invariance_sweep", "transform"]
