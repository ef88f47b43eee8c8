"""The paper's figures as PNG files: Fig. 8 (top-9 grids), Fig. 3 (evolution), Fig. 5 (occlusion),
Fig. 4 (invariance curves) and Table 3.

Image grids are drawn with PIL, pixel-exact; curves and maps with matplotlib's object API
(no pyplot, no global state). Inputs are plain tensors / arrays and lists; where images are
needed they come from a callable ``image_id -> [3, H, W]`` tensor (or a mapping), so nothing
here knows where images live. Every file is written atomically.

Display scaling: a projection is shown contrast-normalized on its own, ``0.5 + 0.5 * p / max|p|``,
so zero is mid-grey (the background of the paper's figures), the sign of every pixel is kept
and each projection uses the full range whatever its magnitude (the paper: "color contrast is
artificially enhanced"). Image patches are min-max scaled over the whole image they come from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw
from torch import nn

from zf_pipeline.deconv import DEFAULT_NORM, Norm, project
from zf_pipeline.io import atomic_path
from zf_pipeline.models.zfnet import CONV_LAYERS, receptive_field

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------- Fig. 8: top-9 grids


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
    by_channel = {c: sorted((r for r in table if int(r["channel"]) == c), key=lambda r: int(r["rank"]))[:9] for c in channels}
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
    table = _records(rows)
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for layer in layers:
        present = sorted({int(r["channel"]) for r in table if r["layer"] == layer})
        if not present:
            continue
        picked = [present[i] for i in choose_maps(len(present), maps, seed)]
        tiles = top9_tiles(model, layer, table, images, receptive_field(model, layer), picked, norm, mean)
        paths[layer] = render_top9_grid(tiles, out_dir / f"fig8_{layer}.png", tile, columns)
    if not paths:
        raise ValueError(f"the top-9 rows hold none of the layers {list(layers)}")
    labels = [f"Layer {layer.removeprefix('conv')}" for layer in paths]
    paths["composed"] = compose_vertical(list(paths.values()), labels, out_dir / "fig8.png")
    return paths


# ---------------------------------------------------------------- Fig. 3: evolution


def render_evolution(
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


# ---------------------------------------------------------------- Fig. 5: occlusion


def render_occlusion(
    image_rgb: torch.Tensor | np.ndarray,
    result: object,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    receptive_field: ReceptiveField | None = None,
    dpi: int = 100,
) -> Path:
    """Fig. 5 for one image, five panels: (a) the image and an occluder, (b) activity of the strongest
    layer-5 map, (c) its projection, (d) correct-class probability, (e) most probable label.

    ``result`` is an :class:`~zf_pipeline.analysis.occlusion.OcclusionResult`; ``image_rgb`` is
    ``[3, H, W]`` in [0, 1]. The maps are drawn at the occluder centres.
    """
    img = np.asarray(torch.as_tensor(image_rgb).float().cpu()).transpose(1, 2, 0)
    # The first synonym: ImageNet's names are WordNet word lists ('gas pump, gasoline pump, petrol pump, ...').
    name = (lambda k: class_names[k].split(",")[0]) if class_names is not None else str
    fig = Figure(figsize=(15, 3.4), dpi=dpi)
    ax = fig.subplots(1, 5)
    half = result.size / 2
    extent = (result.xs[0] + half - 0.5, result.xs[-1] + half + 0.5, result.ys[-1] + half + 0.5, result.ys[0] + half - 0.5)
    ax[0].imshow(np.clip(img, 0, 1))
    mid_y, mid_x = result.ys[len(result.ys) // 2], result.xs[len(result.xs) // 2]
    ax[0].add_patch(Rectangle((mid_x - 0.5, mid_y - 0.5), result.size, result.size, color="0.5"))
    ax[0].set_title(f"(a) input: {name(result.label)}")
    im = ax[1].imshow(result.map_activity, extent=extent, cmap="jet")
    fig.colorbar(im, ax=ax[1], fraction=0.046)
    ax[1].set_title(f"(b) {result.layer} map {result.channel} activity")
    proj = normalize_projection(torch.as_tensor(result.projection)).numpy().transpose(1, 2, 0)
    ax[2].imshow(proj)
    if receptive_field is not None:
        size, stride, offset = receptive_field
        y, x = result.unit
        ax[2].add_patch(Rectangle((offset + x * stride - 0.5, offset + y * stride - 0.5), size, size, fill=False, color="k"))
    ax[2].set_title("(c) projection of that map")
    im = ax[3].imshow(result.true_prob, extent=extent, cmap="jet", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax[3], fraction=0.046)
    ax[3].set_title("(d) p(correct class)")
    labels = np.unique(result.top_label)
    im = ax[4].imshow(np.searchsorted(labels, result.top_label), extent=extent, cmap="tab20", vmin=0, vmax=19,
                      interpolation="nearest")
    handles = [Rectangle((0, 0), 1, 1, color=im.cmap(im.norm(k))) for k in range(len(labels))]
    ax[4].legend(handles, [name(int(k)) for k in labels][:20], fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    ax[4].set_title("(e) most probable label")
    for a in ax:
        a.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.9, wspace=0.3)
    return _save_figure(fig, path)


# ---------------------------------------------------------------- Fig. 4: invariance


def render_invariance(results: Sequence[object], path: str | Path, dpi: int = 100) -> Path:
    """Fig. 4: one row per transform, columns = distance at each layer, then p(true class); one line per image.

    ``results`` are :class:`~zf_pipeline.analysis.invariance.InvarianceResult` (one per transform).
    """
    layers = list(results[0].distance)
    units = {"translation": "vertical shift (pixels)", "scale": "scale (ratio)", "rotation": "rotation (degrees)"}
    fig = Figure(figsize=(4 * (len(layers) + 1), 3 * len(results)), dpi=dpi)
    axes = np.atleast_2d(fig.subplots(len(results), len(layers) + 1, squeeze=False))
    for row, res in zip(axes, results):
        curves = [(f"{layer}: Euclidean distance", res.distance[layer]) for layer in layers] + [("p(true class)", res.true_prob)]
        for ax, (title, values) in zip(row, curves):
            for image_id, v in zip(res.image_ids, values):
                ax.plot(res.amounts, v, marker=".", label=image_id)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(units.get(res.transform, res.transform), fontsize=8)
        row[-1].set_ylim(0, 1)
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    return _save_figure(fig, path)


# ---------------------------------------------------------------- Table 3


def render_table3(rows: Sequence[Mapping], path: str | Path, dpi: int = 100) -> Path:
    """Table 3 as an image: one row per occluded part, one column per layer, "mean ± std"."""
    parts = list(dict.fromkeys(r["part"] for r in rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    cell = {(r["part"], r["layer"]): f"{r['mean']:.3f} ± {r['std']:.3f}" for r in rows}
    fig = Figure(figsize=(1.8 + 1.8 * len(layers), 0.4 * (len(parts) + 1.5)), dpi=dpi)
    ax = fig.subplots()
    ax.axis("off")
    ax.table(cellText=[[cell.get((p, lay), "") for lay in layers] for p in parts], rowLabels=parts,
             colLabels=[f"{lay}: mean sign change" for lay in layers], loc="center")
    return _save_figure(fig, path)


__all__ = [
    "Top9Tiles",
    "choose_maps",
    "compose_vertical",
    "image_to_rgb",
    "normalize_projection",
    "render_evolution",
    "render_fig8",
    "render_invariance",
    "render_occlusion",
    "render_table3",
    "render_top9_grid",
    "top9_grid_size",
    "top9_tiles",
    "unit_patch",
]


# ---------------------------------------------------------------- dataset samples


def render_samples(images: Sequence[Image.Image], captions: Sequence[str], path: str | Path, tile: int = 96, columns: int = 8) -> Path:
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
