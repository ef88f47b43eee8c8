"""Fig. 3: the evolution of a feature map's strongest activation over training epochs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from zf_pipeline.render.common import (
    BACKGROUND,
    GAP,
    LABEL_HEIGHT,
    ReceptiveField,
    _save,
    _to_pil,
    normalize_projection,
    unit_patch,
)


def render_fig3(
    projections: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    receptive_field: ReceptiveField,
    epochs: Sequence[int],
    path: str | Path,
    tile: int = 64,
) -> Path:
    """Fig. 3 for one layer: row = feature map, column = epoch; each projection ``[C, E, 3, H, W]``
    cut to its unit's receptive field (``ys``, ``xs``: ``[C, E]``) and contrast-normalized."""
    c, e = projections.shape[:2]
    if len(epochs) != e:
        raise ValueError(f"{len(epochs)} epoch labels for {e} columns of projections")
    width, height = e * tile + (e + 1) * GAP, LABEL_HEIGHT + c * tile + (c + 1) * GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for j, epoch in enumerate(epochs):
        draw.text((GAP + j * (tile + GAP) + 2, 6), f"ep {epoch}", fill=(0, 0, 0))
        for i in range(c):
            patch = unit_patch(projections[i, j].float(), receptive_field, int(ys[i, j]), int(xs[i, j]), fill=0.0)
            where = (GAP + j * (tile + GAP), LABEL_HEIGHT + GAP + i * (tile + GAP))
            canvas.paste(_to_pil(normalize_projection(patch), tile), where)
    return _save(canvas, path)

