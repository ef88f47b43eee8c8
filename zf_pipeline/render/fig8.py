"""Fig. 8: the top-9 activations of feature maps, projected to pixels by the deconvnet, beside their image patches
(layer 1 also shows its filters)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import nn

from zf_pipeline.deconv import DEFAULT_NORM, Norm, project
from zf_pipeline.models.zfnet import CONV_LAYERS, receptive_field
from zf_pipeline.render.common import (
    BACKGROUND,
    BLOCK_GAP,
    CELL_GAP,
    EMPTY_TILE,
    GAP,
    LABEL_HEIGHT,
    ImageSource,
    ReceptiveField,
    _save,
    _to_pil,
    image_to_rgb,
    normalize_projection,
    unit_patch,
)

logger = logging.getLogger(__name__)


@dataclass
class Top9Tiles:
    """The pieces of one layer's Fig. 8: per feature map, up to 9 projections and their image patches."""

    layer: str
    channels: list[int]
    projections: torch.Tensor  # [M, 9, 3, s, s] in [0, 1] (contrast-normalized, grey where missing)
    patches: torch.Tensor  # [M, 9, 3, s, s] in [0, 1]
    filters: torch.Tensor | None = None  # [M, 3, k, k] in [0, 1]: layer 1's filters


def _records(rows: object) -> list[dict]:
    """Rows of the top-9 table as dicts, from a list of dicts, a pyarrow Table or a pandas DataFrame."""
    if hasattr(rows, "to_pylist"):
        return rows.to_pylist()
    if hasattr(rows, "to_dict"):
        return rows.to_dict("records")
    return [dict(r) for r in rows]


def _load(images: ImageSource, image_id: str) -> torch.Tensor:
    return images[image_id] if isinstance(images, Mapping) else images(image_id)


def choose_maps(num_maps: int, count: int | None = 16, seed: int = 0) -> list[int]:
    """A fixed random sample of ``count`` of a layer's ``num_maps`` maps, sorted (all when ``count`` is None)."""
    if count is None or count >= num_maps:
        return list(range(num_maps))
    return sorted(torch.randperm(num_maps, generator=torch.Generator().manual_seed(seed))[:count].tolist())


def shown_rows(rows: Iterable[Mapping] | object, layers: Sequence[str], maps: int | None = 16,
               seed: int = 0) -> list[dict]:
    """The top-9 rows of the maps a figure shows: per layer, the :func:`choose_maps` sample of the maps in
    ``rows``. Only these rows' images need loading: the top-9 of every map name most of a split's images."""
    table = _records(rows)
    shown = []
    for layer in layers:
        in_layer = [r for r in table if r["layer"] == layer]
        present = sorted({int(r["channel"]) for r in in_layer})
        picked = {present[i] for i in choose_maps(len(present), maps, seed)}
        shown += [r for r in in_layer if int(r["channel"]) in picked]
    return shown


def top9_tiles(
    model: nn.Module,
    layer: str,
    rows: Iterable[Mapping] | object,
    images: ImageSource,
    receptive_field: ReceptiveField,
    channels: Sequence[int] | None = None,
    norm: Norm = DEFAULT_NORM,
    mean: torch.Tensor | None = None,
    maps_per_pass: int = 16,
) -> Top9Tiles:
    """Project the top-9 activations of ``layer`` listed in ``rows`` and cut their receptive-field patches.

    ``rows`` has the top-9 table's columns (layer, channel, rank, image_id, value, y, x); rows of
    other layers are ignored. ``channels`` picks the maps (default: every map in ``rows``).
    ``images(image_id)`` returns the network input ``[3, H, W]`` the table was mined from.
    """
    table = [r for r in _records(rows) if r["layer"] == layer]
    present = sorted({int(r["channel"]) for r in table})
    channels = present if channels is None else [int(c) for c in channels]
    missing = sorted(set(channels) - set(present))
    if missing:
        raise KeyError(f"top-9 rows have no entries for {layer} maps {missing[:10]}")
    by_channel = {
        c: sorted((r for r in table if int(r["channel"]) == c), key=lambda r: int(r["rank"]))[:9] for c in channels
    }
    size = receptive_field[0]
    proj_tiles = torch.full((len(channels), 9, 3, size, size), EMPTY_TILE)
    patch_tiles = torch.full_like(proj_tiles, EMPTY_TILE)
    for start in range(0, len(channels), maps_per_pass):
        chunk = enumerate(channels[start : start + maps_per_pass], start)
        seeds = [(m, k, r) for m, c in chunk for k, r in enumerate(by_channel[c])]
        ids = {image_id: k for k, image_id in enumerate(dict.fromkeys(str(r["image_id"]) for _, _, r in seeds))}
        batch = torch.stack([_load(images, i) for i in ids])
        index = [ids[str(r["image_id"])] for _, _, r in seeds]
        ys, xs = [int(r["y"]) for _, _, r in seeds], [int(r["x"]) for _, _, r in seeds]
        proj = project(model, batch, layer, [channels[m] for m, _, _ in seeds], ys, xs, image_index=index, norm=norm)
        proj, rgb = proj.float().cpu(), image_to_rgb(batch.float(), mean)
        for (m, k, _), p, i, y, x in zip(seeds, proj, index, ys, xs):
            proj_tiles[m, k] = normalize_projection(unit_patch(p, receptive_field, y, x, fill=0.0))
            patch_tiles[m, k] = unit_patch(rgb[i], receptive_field, y, x)
        logger.info("top-9 %s: %d/%d maps projected", layer, min(start + maps_per_pass, len(channels)), len(channels))
    filters = None
    if layer == "conv1":
        filters = normalize_projection(model.get_submodule("conv1").weight.detach()[channels].float().cpu(), clip=1.0)
    return Top9Tiles(layer, channels, proj_tiles, patch_tiles, filters)


def top9_grid_size(maps: int, columns: int, tile: int, blocks: int) -> tuple[int, int]:
    """(width, height) in pixels of a Fig. 8 grid of ``maps`` cells with ``blocks`` 3x3 blocks each."""
    block = 3 * tile + 2 * GAP
    cell_w = blocks * block + (blocks - 1) * BLOCK_GAP
    cols, rows = min(columns, maps), math.ceil(maps / columns)
    return cols * cell_w + (cols + 1) * CELL_GAP, rows * block + (rows + 1) * CELL_GAP


def render_top9_grid(tiles: Top9Tiles, path: str | Path, tile: int = 48, columns: int = 4) -> Path:
    """Fig. 8 for one layer: per map, [layer 1: the filter |] 3x3 projections | 3x3 image patches."""
    blocks = 2 + (tiles.filters is not None)
    width, height = top9_grid_size(len(tiles.channels), columns, tile, blocks)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    block = 3 * tile + 2 * GAP
    cell_w = blocks * block + (blocks - 1) * BLOCK_GAP
    for m in range(len(tiles.channels)):
        left = CELL_GAP + (m % columns) * (cell_w + CELL_GAP)
        top = CELL_GAP + (m // columns) * (block + CELL_GAP)
        if tiles.filters is not None:
            canvas.paste(_to_pil(tiles.filters[m], block), (left, top))
            left += block + BLOCK_GAP
        for part in (tiles.projections[m], tiles.patches[m]):
            for k in range(9):
                canvas.paste(_to_pil(part[k], tile), (left + (k % 3) * (tile + GAP), top + (k // 3) * (tile + GAP)))
            left += block + BLOCK_GAP
    return _save(canvas, path)


def compose_vertical(paths: Sequence[str | Path], labels: Sequence[str], path: str | Path) -> Path:
    """Stack images (e.g. the per-layer Fig. 8 grids) top to bottom, each under a text label."""
    ims = [Image.open(p).convert("RGB") for p in paths]
    width = max(im.width for im in ims)
    canvas = Image.new("RGB", (width, sum(im.height + LABEL_HEIGHT for im in ims)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    top = 0
    for im, label in zip(ims, labels):
        draw.text((CELL_GAP, top + 6), label, fill=(0, 0, 0))
        canvas.paste(im, (0, top + LABEL_HEIGHT))
        top += im.height + LABEL_HEIGHT
    return _save(canvas, path)


def render_fig8(
    model: nn.Module,
    rows: Iterable[Mapping] | object,
    images: ImageSource,
    out_dir: str | Path,
    layers: Sequence[str] = CONV_LAYERS,
    maps: int | None = 16,
    seed: int = 0,
    norm: Norm = DEFAULT_NORM,
    mean: torch.Tensor | None = None,
    tile: int = 48,
    columns: int = 4,
) -> dict[str, Path]:
    """Fig. 8: ``<out_dir>/fig8_<layer>.png`` for each of ``layers`` present in ``rows``, and ``fig8.png``
    stacking them. ``maps`` feature maps per layer, a fixed random sample (:func:`choose_maps`, ``seed``)
    of the maps in ``rows``; None for all. Returns the paths by layer, plus ``"composed"``."""
    table = shown_rows(rows, layers, maps, seed)
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for layer in layers:
        picked = sorted({int(r["channel"]) for r in table if r["layer"] == layer})
        if not picked:
            continue
        tiles = top9_tiles(model, layer, table, images, receptive_field(model, layer), picked, norm, mean)
        paths[layer] = render_top9_grid(tiles, out_dir / f"fig8_{layer}.png", tile, columns)
    if not paths:
        raise ValueError(f"the top-9 rows hold none of the layers {list(layers)}")
    labels = [f"Layer {layer.removeprefix('conv')}" for layer in paths]
    paths["composed"] = compose_vertical(list(paths.values()), labels, out_dir / "fig8.png")
    return paths

