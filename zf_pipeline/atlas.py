"""The atlas: a static HTML site to browse a trained network the way the paper's figures do.

Section 4 of the paper shows, for a feature map, "the top 9 activations ... each projected
separately down to pixel space" beside "the corresponding image patches" (Fig. 2 / Fig. 8), the
strongest activation over training (Fig. 3), occlusion and invariance (Figs. 4, 5) and, in
section 5, the transfer tables. The atlas puts all of that in one folder of plain HTML:

* ``index.html``: the layers, and links to the figures and tables pages when given;
* ``<layer>/index.html``: every rendered feature map of the layer as a small thumbnail (its nine
  projections), lazy-loaded with fixed sizes, so layers of a thousand maps open at once;
* ``<layer>/u<channel>.html``: one feature map: nine projections and nine image patches, each a
  separate image captioned with rank, activation value and image id; layer 1's filter; its
  evolution over checkpoints when given.

It opens from disk (``file://``): no server, no network, no external scripts, styles or fonts;
every link is relative. Projections and patches come from :func:`zf_pipeline.render.top9_tiles`
(the deconvnet of :mod:`zf_pipeline.deconv`), so the atlas shows exactly what Fig. 8 shows.
The site is built in a temporary folder beside ``out_dir`` and renamed onto it at the end.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from zf_pipeline.analysis.evolution import Evolution
from zf_pipeline.analysis.filters import high_frequency_share
from zf_pipeline.atlas_html import GOTO_JS, KEYS_JS, copy_png, figure, img, page, table_html, wide, write_page
from zf_pipeline.deconv import DEFAULT_NORM, Norm
from zf_pipeline.io import atomic_path
from zf_pipeline.models.zfnet import CONV_LAYERS, receptive_field
from zf_pipeline.render.common import GAP, ImageSource, _to_pil
from zf_pipeline.render.fig3 import render_fig3
from zf_pipeline.render.fig8 import Top9Tiles, _records, shown_rows, top9_tiles

logger = logging.getLogger(__name__)

TOP9_COLUMNS = ("layer", "channel", "rank", "image_id", "value", "y", "x")
TILE = 96  # largest stored side of a projection / patch tile (smaller receptive fields are stored as they are)
THUMB_TILE = 20  # side of each of the nine projections in a layer page's thumbnail
DISPLAY = 112  # CSS side of a tile on a unit page

@dataclass
class AtlasExtras:
    """Optional content made elsewhere, shown beside the top-9 pages.

    ``evolution``: Fig. 3 data (:class:`~zf_pipeline.analysis.evolution.Evolution`, one per layer);
    each map in it gets its row of projections over the epochs on its unit page, and its layer page
    the whole figure. ``layer_figures``: layer -> title -> PNG shown on that layer's page.
    ``figures``: title -> PNG on the figures page (occlusion Fig. 5, invariance Fig. 4, Table 3,
    Fig. 7, ...). ``tables``: title -> table, as markdown (pipe table) or HTML, on the tables page
    (Tables 1, 2, 4-7). Every PNG is copied into the site.
    """

    evolution: Sequence[Evolution] = ()
    layer_figures: Mapping[str, Mapping[str, str | Path]] = field(default_factory=dict)
    figures: Mapping[str, str | Path] = field(default_factory=dict)
    tables: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Unit:
    """One feature map's top-9 entries (rank order) as the unit page captions them."""

    channel: int
    entries: list[dict]

    @property
    def top(self) -> float:
        return float(self.entries[0]["value"]) if self.entries else float("nan")


def build_atlas(
    out_dir: str | Path,
    model: nn.Module,
    top9_rows: object,
    images: ImageSource,
    *,
    mean: torch.Tensor | None = None,
    layers: Sequence[str] | None = None,
    maps: int | Mapping[str, Sequence[int]] | None = None,
    extras: AtlasExtras | None = None,
    norm: Norm = DEFAULT_NORM,
    tile: int = TILE,
    title: str = "ZFNet atlas",
    maps_per_pass: int = 32,
) -> Path:
    """Write the atlas of ``model`` to ``out_dir`` (replacing it) and return the path of its ``index.html``.

    Args:
        out_dir: the site's folder; built beside it under a temporary name, then renamed onto it.
        model: the trained network the top-9 table was mined from (a ZFNet).
        top9_rows: the top-9 table (columns layer, channel, rank 1..9, image_id, value, y, x) as a
            pyarrow Table, pandas DataFrame or list of dicts.
        images: ``image_id -> [3, S, S]`` network input (mean-subtracted), a callable or a mapping.
        mean: the mean image, added back for display.
        layers: the convolutional layers to show (default: those of ``top9_rows`` present in the model).
        maps: the feature maps per layer: None for every map in the table, an int for a fixed random
            sample of that many (:func:`~zf_pipeline.render.choose_maps`), or layer -> channels
            (a layer left out of the mapping shows every map).
        extras: evolution, figures and tables to show beside the top-9 pages.
        norm: how the deconvnet inverts contrast normalization (see :mod:`zf_pipeline.deconv`).
        tile: the largest side, in pixels, of a stored projection or patch.
        title: the site's title.
        maps_per_pass: feature maps projected at once (bounds memory on wide layers).
    """
    rows = _checked_rows(top9_rows)
    extras = extras or AtlasExtras()
    layers = _layers(model, rows, layers)
    source = _checked_images(images)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as site:
        site.mkdir()
        summaries = []
        for layer in layers:
            units = _units(rows, layer, maps)
            summaries.append(_write_layer(site, model, layer, units, rows, source, mean, norm, tile, maps_per_pass,
                                          extras))
        has_figures, has_tables = _write_figures_page(site, extras), _write_tables_page(site, extras)
        _write_index(site, title, summaries, has_figures, has_tables)
    logger.info("atlas: %d layers written to %s", len(layers), out_dir)
    return out_dir / "index.html"


# ---------------------------------------------------------------- inputs


def _checked_rows(top9_rows: object) -> list[dict]:
    rows = _records(top9_rows)
    if not rows:
        raise ValueError("the top-9 table is empty: nothing to put in the atlas")
    missing = [c for c in TOP9_COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"the top-9 table lacks columns {missing}; expected {list(TOP9_COLUMNS)}, "
                         f"got {sorted(rows[0])}")
    return rows


def _layers(model: nn.Module, rows: list[dict], layers: Sequence[str] | None) -> list[str]:
    present = {r["layer"] for r in rows}
    in_model = [layer for layer in CONV_LAYERS if layer in getattr(model, "layers", CONV_LAYERS)]
    if layers is None:
        chosen = [layer for layer in in_model if layer in present]
        if not chosen:
            raise ValueError(f"the top-9 table holds no convolutional layer of this model {in_model}; "
                             f"it has {sorted(present)}")
        return chosen
    for layer in layers:
        if layer not in in_model:
            raise ValueError(f"the atlas shows the model's convolutional layers {in_model}, not {layer!r}")
        if layer not in present:
            raise ValueError(f"the top-9 table has no rows for {layer!r}; it has {sorted(present)}")
    return list(layers)


def _checked_images(images: ImageSource) -> Callable[[str], torch.Tensor]:
    """The image source as a callable that names the image when it is missing or not ``[3, S, S]``."""

    def load(image_id: str) -> torch.Tensor:
        try:
            x = images[image_id] if isinstance(images, Mapping) else images(image_id)
        except KeyError as e:
            raise KeyError(f"image {image_id!r} of the top-9 table is not in the atlas's image source") from e
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"image {image_id!r}: expected a [3, S, S] network-input tensor, got {shape}")
        return x

    return load


def _units(rows: list[dict], layer: str, maps: int | Mapping[str, Sequence[int]] | None) -> list[_Unit]:
    by_channel: dict[int, list[dict]] = {}
    for r in rows:
        if r["layer"] == layer:
            by_channel.setdefault(int(r["channel"]), []).append(r)
    present = sorted(by_channel)
    if isinstance(maps, Mapping):
        wanted = [int(c) for c in maps.get(layer, present)]
        missing = sorted(set(wanted) - set(present))
        if missing:
            raise KeyError(f"the top-9 table has no entries for {layer} maps {missing[:10]}")
    else:
        wanted = sorted({int(r["channel"]) for r in shown_rows(rows, [layer], maps)})
    return [_Unit(c, sorted(by_channel[c], key=lambda r: int(r["rank"]))[:9]) for c in wanted]


# ---------------------------------------------------------------- pages


def _unit_name(channel: int) -> str:
    return f"u{channel:04d}"


def _thumbnail(projections: torch.Tensor) -> Image.Image:
    """The nine projections of one map as a 3x3 block of ``THUMB_TILE`` px tiles (the layer page's sprite)."""
    side = 3 * THUMB_TILE + 2 * GAP
    block = Image.new("RGB", (side, side), (255, 255, 255))
    for k in range(9):
        block.paste(_to_pil(projections[k], THUMB_TILE), ((k % 3) * (THUMB_TILE + GAP), (k // 3) * (THUMB_TILE + GAP)))
    return block


def _write_layer(
    site: Path,
    model: nn.Module,
    layer: str,
    units: list[_Unit],
    rows: list[dict],
    images: Callable[[str], torch.Tensor],
    mean: torch.Tensor | None,
    norm: Norm,
    tile: int,
    maps_per_pass: int,
    extras: AtlasExtras,
) -> dict:
    """A layer's tiles, unit pages and index page; returns the layer's line of the site index."""
    rf = receptive_field(model, layer)
    side = min(rf[0], tile)
    folder = site / layer
    for start in range(0, len(units), maps_per_pass):
        chunk = units[start : start + maps_per_pass]
        tiles = top9_tiles(model, layer, rows, images, rf, [u.channel for u in chunk], norm, mean)
        _write_tiles(folder / "img", tiles, side)
        logger.info("atlas %s: %d/%d maps rendered", layer, start + len(chunk), len(units))
    evolved = _write_evolution(folder, layer, rf, extras.evolution, {u.channel for u in units})
    figures = {"Fig. 3: evolution of the strongest projection over training": "evolution.png"} if evolved else {}
    for k, (name, png) in enumerate(extras.layer_figures.get(layer, {}).items()):
        figures[name] = copy_png(png, folder / "img" / f"figure{k}.png")
    # layer 1's filter quality: noise keeps its power above 0.25 cycles/pixel, edges and blobs do not
    hf = high_frequency_share(model.get_submodule("conv1").weight) if layer == "conv1" else None
    for i, unit in enumerate(units):
        hf_unit = None if hf is None else float(hf[unit.channel])
        write_page(folder / f"{_unit_name(unit.channel)}.html",
                   _unit_page(layer, units, i, rf, units[i].channel in evolved, hf_unit))
    write_page(folder / "index.html", _layer_page(layer, units, rf, figures, hf))
    return {"layer": layer, "maps": len(units), "rf": rf, "top": max(u.top for u in units)}


def _write_tiles(img_dir: Path, tiles: Top9Tiles, side: int) -> None:
    img_dir.mkdir(parents=True, exist_ok=True)
    for m, channel in enumerate(tiles.channels):
        name = _unit_name(channel)
        for k in range(9):
            _to_pil(tiles.projections[m, k], side).save(img_dir / f"{name}_p{k + 1}.png", format="PNG")
            _to_pil(tiles.patches[m, k], side).save(img_dir / f"{name}_i{k + 1}.png", format="PNG")
        _thumbnail(tiles.projections[m]).save(img_dir / f"{name}_thumb.png", format="PNG")
        if tiles.filters is not None:
            _to_pil(tiles.filters[m], DISPLAY).save(img_dir / f"{name}_filter.png", format="PNG")


def _write_evolution(
    folder: Path, layer: str, rf: tuple[int, int, int], evolutions: Sequence[Evolution], shown: set[int]
) -> set[int]:
    """Fig. 3 for ``layer`` as ``img/evolution.png`` and one row per shown map, if an evolution of the
    layer is given; returns the maps that got their row."""
    ev = next((e for e in evolutions if e.layer == layer), None)
    if ev is None:
        return set()
    render_fig3(ev.projections, ev.ys, ev.xs, rf, ev.epochs, folder / "img" / "evolution.png")
    evolved = set()
    for i, channel in enumerate(ev.channels):
        if channel in shown:
            row = slice(i, i + 1)
            render_fig3(ev.projections[row], ev.ys[row], ev.xs[row], rf, ev.epochs,
                             folder / "img" / f"{_unit_name(channel)}_evolution.png")
            evolved.add(channel)
    return evolved


def _layer_page(layer: str, units: list[_Unit], rf: tuple[int, int, int], figures: Mapping[str, str],
                hf: torch.Tensor | None = None) -> str:
    side = 3 * THUMB_TILE + 2 * GAP
    cells = "".join(
        f'<a id="m{u.channel}" href="{_unit_name(u.channel)}.html" title="map {u.channel}: top activation {u.top:.3g}">'
        f'{img(f"img/{_unit_name(u.channel)}_thumb.png", f"{layer} map {u.channel}", side, lazy=True)}{u.channel}</a>'
        for u in units
    )
    body = (
        f'<p>{len(units)} feature maps; each thumbnail shows the deconvnet projections of its top 9 activations. '
        f'Receptive field {rf[0]} px, stride {rf[1]} px. Use the arrow keys on a map\'s page to walk the layer.</p>'
        f'<form id="goto">Go to map <input name="c" size="8" inputmode="numeric"> <button>go</button></form>'
        + _filter_quality(hf)
        + "".join(wide(f"img/{src}", name) for name, src in figures.items())
        + f'<h2>Feature maps</h2><div class="maps">{cells}</div>'
    )
    return page(f"Layer {layer.removeprefix('conv')} ({layer})", body, [("../index.html", "atlas")], GOTO_JS)


def _filter_quality(hf: torch.Tensor | None) -> str:
    """The layer-1 page's line on its filters' high-frequency share (:mod:`zf_pipeline.analysis.filters`)."""
    if hf is None:
        return ""
    p25, median, p75 = hf.nanquantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
    return (f'<p id="filter-quality">Filter quality: the median high-frequency share of the {len(hf)} filters is '
            f'<b>{median:.2f}</b> (quartiles {p25:.2f}-{p75:.2f}), the share of a filter\'s spectral power above '
            f'0.25 cycles/pixel. White noise scores 0.80, a smooth edge about 0.15.</p>')


def _unit_page(layer: str, units: list[_Unit], i: int, rf: tuple[int, int, int], has_evolution: bool,
               hf: float | None = None) -> str:
    unit = units[i]
    name = _unit_name(unit.channel)
    entries = unit.entries + [None] * (9 - len(unit.entries))

    def caption(e: dict | None) -> str:
        return "—" if e is None else f"#{int(e['rank'])}  {float(e['value']):.3g}  {e['image_id']}"

    def grid(kind: str, what: str, heading: str) -> str:
        figs = "".join(
            figure(f"img/{name}_{kind}{k + 1}.png", f"{what} {k + 1} of {layer} map {unit.channel}", caption(e),
                   DISPLAY)
            for k, e in enumerate(entries)
        )
        return f'<div><h2>{heading}</h2><div class="grid {kind}">{figs}</div></div>'

    nav = [("../index.html", "atlas"), ("index.html", f"layer {layer}")]
    if i > 0:
        nav.append((f"{_unit_name(units[i - 1].channel)}.html", f"previous (map {units[i - 1].channel})"))
    if i + 1 < len(units):
        nav.append((f"{_unit_name(units[i + 1].channel)}.html", f"next (map {units[i + 1].channel})"))
    body = (
        f'<p>The top 9 activations of this feature map over the image set, each projected separately down to '
        f'pixel space by the deconvnet, and the image patch its unit sees ({rf[0]}x{rf[0]} px). '
        f'Captions: rank, activation, image id.</p>'
    )
    if layer == "conv1":
        share = "" if hf is None else f" (high-frequency share {hf:.2f}; white noise 0.80)"
        body += f'<h2>Filter{share}</h2>{img(f"img/{name}_filter.png", f"conv1 filter {unit.channel}", DISPLAY)}'
    pair = grid("p", "projection", "Projections") + grid("i", "image patch", "Image patches")
    body += f'<div class="pair">{pair}</div>'
    if has_evolution:
        body += wide(f"img/{name}_evolution.png", "Evolution over training (Fig. 3)")
    return page(f"{layer} map {unit.channel}", body, nav, KEYS_JS)


def _write_figures_page(site: Path, extras: AtlasExtras) -> bool:
    if not extras.figures:
        return False
    parts = [wide(f"figures/{copy_png(png, site / 'figures' / f'figure{k}.png')}", name)
             for k, (name, png) in enumerate(extras.figures.items())]
    write_page(site / "figures.html", page("Figures", "".join(parts), [("index.html", "atlas")]))
    return True


def _write_tables_page(site: Path, extras: AtlasExtras) -> bool:
    if not extras.tables:
        return False
    parts = [f"<h2>{html.escape(name)}</h2>{table_html(text)}" for name, text in extras.tables.items()]
    write_page(site / "tables.html", page("Tables", "".join(parts), [("index.html", "atlas")]))
    return True


def _write_index(site: Path, title: str, summaries: list[dict], has_figures: bool, has_tables: bool) -> None:
    lines = "".join(
        f'<tr><td><a href="{s["layer"]}/index.html">{s["layer"]}</a></td><td>{s["maps"]}</td>'
        f'<td>{s["rf"][0]} px / {s["rf"][1]}</td><td>{s["top"]:.3g}</td></tr>'
        for s in summaries
    )
    body = (
        "<p>Feature visualization after Zeiler &amp; Fergus (2014), section 4: for each feature map, its top 9 "
        "activations projected to pixel space with the deconvnet, beside the image patches that caused them.</p>"
        "<table><tr><th>layer</th><th>maps</th><th>receptive field / stride</th><th>top activation</th></tr>"
        f"{lines}</table>"
    )
    nav = [("figures.html", "figures")] * has_figures + [("tables.html", "tables")] * has_tables
    write_page(site / "index.html", page(title, body, nav))


__all__ = ["AtlasExtras", "TOP9_COLUMNS", "build_atlas", "table_html"]
