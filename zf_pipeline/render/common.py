"""What every figure shares: display scaling, tiles, atomic PNG writes, and the dataset sample grid.

Display scaling: a projection is shown contrast-normalized on its own, ``0.5 + 0.5 * p / max|p|``,
so zero is mid-grey (the background of the paper's figures), the sign of every pixel is kept
and each projection uses the full range whatever its magnitude (the paper: "color contrast is
artificially enhanced"). Image patches are min-max scaled over the whole image they come from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from zf_pipeline.io import atomic_path

GAP = 2  # pixels between tiles of a 3x3 block
BLOCK_GAP = 6  # between the blocks of one feature map (filter | projections | patches)
CELL_GAP = 12  # between feature maps, and around the grid
LABEL_HEIGHT = 24  # text strip above each layer in the composed figure / epochs in Fig. 3
BACKGROUND = (255, 255, 255)
EMPTY_TILE = 0.5  # grey: a missing top-9 entry, or the part of a patch outside the image

ImageSource = Callable[[str], torch.Tensor] | Mapping[str, torch.Tensor]
ReceptiveField = tuple[int, int, int]  # (size, stride, offset), as zfnet.receptive_field returns


def normalize_projection(p: torch.Tensor, clip: float = 0.995) -> torch.Tensor:
    """``[..., 3, h, w]`` -> [0, 1] per projection: 0.5 + 0.5 * p / s, clipped, so zero stays mid-grey.

    ``s`` is the ``clip`` quantile of |p| over the projection's nonzero pixels (``clip=1``: max|p|). A few
    extreme pixels (a net trained briefly keeps high-frequency first-layer filters) would otherwise
    squash the whole projection to grey.
    """
    flat = p.abs().flatten(-3).float()
    scale = torch.nanquantile(flat.masked_fill(flat == 0, float("nan")), clip, dim=-1)
    scale = scale.nan_to_num(1.0).clamp_min(1e-12)[..., None, None, None].to(p.dtype)
    return (0.5 + 0.5 * p / scale).clamp(0, 1)


def image_to_rgb(x: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """A network input ``[..., 3, H, W]`` (mean-subtracted) as displayable [0, 1]: add ``mean`` if
    given, then min-max scale each image."""
    x = x if mean is None else x + mean.to(x)
    flat = x.flatten(-3)
    lo, hi = flat.amin(-1)[..., None, None, None], flat.amax(-1)[..., None, None, None]
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def unit_patch(x: torch.Tensor, rf: ReceptiveField, y: int, xx: int, fill: float = EMPTY_TILE) -> torch.Tensor:
    """The ``size`` x ``size`` window of ``x`` ([C, H, W]) that unit (y, xx) sees; outside the image: ``fill``."""
    size, stride, offset = rf
    top, left = offset + y * stride, offset + xx * stride
    out = x.new_full((x.shape[0], size, size), fill)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, x.shape[1]), min(left + size, x.shape[2])
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = x[:, y0:y1, x0:x1]
    return out


def _to_pil(t: torch.Tensor | np.ndarray, side: int | tuple[int, int]) -> Image.Image:
    """[3, h, w] in [0, 1] -> RGB image of ``side``; nearest-neighbour when enlarging keeps pixels crisp."""
    arr = (np.clip(np.asarray(torch.as_tensor(t).float().cpu()), 0, 1) * 255).round().astype(np.uint8)
    im = Image.fromarray(arr.transpose(1, 2, 0))
    size = (side, side) if isinstance(side, int) else side
    return im.resize(size, Image.NEAREST if size[0] >= im.width else Image.LANCZOS)


def _save(im: Image.Image, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return Path(path)


def _save_figure(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


# ---------------------------------------------------------------- dataset samples


def render_samples(
    images: Sequence[Image.Image], captions: Sequence[str], path: str | Path, tile: int = 96, columns: int = 8
) -> Path:
    """A grid of images with a caption under each (e.g. the first samples of a shard)."""
    rows = max(1, math.ceil(len(images) / columns))
    cell_h = tile + 14
    sheet = Image.new("RGB", (columns * (tile + GAP) + GAP, rows * (cell_h + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (im, caption) in enumerate(zip(images, captions)):
        x, y = GAP + (i % columns) * (tile + GAP), GAP + (i // columns) * (cell_h + GAP)
        sheet.paste(im.convert("RGB").resize((tile, tile), Image.LANCZOS), (x, y))
        draw.text((x + 2, y + tile + 1), caption[: tile // 6], fill="black")
    return _save(sheet, path)
