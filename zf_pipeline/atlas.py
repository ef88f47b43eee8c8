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
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from zf_pipeline.analysis.evolution import Evolution
from zf_pipeline.deconv import DEFAULT_NORM, Norm
from zf_pipeline.io import atomic_path
from zf_pipeline.models.zfnet import CONV_LAYERS, receptive_field
from zf_pipeline.render.common import GAP, ImageSource, _to_pil
from zf_pipeline.render.fig3 import render_fig3
from zf_pipeline.render.fig8 import Top9Tiles, _records, choose_maps, top9_tiles

logger = logging.getLogger(__name__)

TOP9_COLUMNS = ("layer", "channel", "rank", "image_id", "value", "y", "x")
TILE = 96  # largest stored side of a projection / patch tile (smaller receptive fields are stored as they are)
THUMB_TILE = 20  # side of each of the nine projections in a layer page's thumbnail
DISPLAY = 112  # CSS side of a tile on a unit page
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
a{color:#0550ae;text-decoration:none}a:hover{text-decoration:underline}
nav{margin-bottom:1em}nav a{margin-right:1em}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
.maps{display:flex;flex-wrap:wrap;gap:6px}
.maps a{display:flex;flex-direction:column;align-items:center;font-size:11px;color:#444}
.maps img,.grid img{image-rendering:pixelated;background:#808080}
.grid{display:grid;grid-template-columns:repeat(3,auto);gap:6px;justify-content:start}
figure{margin:0}figcaption{font-size:11px;color:#444;max-width:112px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.pair{display:flex;flex-wrap:wrap;gap:2.5em}
.wide img{max-width:100%}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}
"""

# Left / right arrow keys walk through the feature maps of a layer (links carry rel=prev / rel=next).
KEYS_JS = """
document.addEventListener('keydown',function(e){
  var a=document.querySelector(e.key==='ArrowLeft'?'a[rel=prev]':e.key==='ArrowRight'?'a[rel=next]':null);
  if(a)location.href=a.getAttribute('href');});
"""

# "Go to map": jump to a feature map of this layer by its channel number.
GOTO_JS = """
document.getElementById('goto').addEventListener('submit',function(e){
  e.preventDefault();var c=parseInt(this.elements.c.value,10),a=document.getElementById('m'+c);
  if(a)location.href=a.getAttribute('href');else this.elements.c.value='no map '+this.elements.c.value;});
"""


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
            summaries.append(_write_layer(site, model, layer, units, rows, source, mean, norm, tile, maps_per_pass, extras))
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
        raise ValueError(f"the top-9 table lacks columns {missing}; expected {list(TOP9_COLUMNS)}, got {sorted(rows[0])}")
    return rows


def _layers(model: nn.Module, rows: list[dict], layers: Sequence[str] | None) -> list[str]:
    present = {r["layer"] for r in rows}
    in_model = [layer for layer in CONV_LAYERS if layer in getattr(model, "layers", CONV_LAYERS)]
    if layers is None:
        chosen = [layer for layer in in_model if layer in present]
        if not chosen:
            raise ValueError(f"the top-9 table holds no convolutional layer of this model {in_model}; it has {sorted(present)}")
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
        wanted = [present[i] for i in choose_maps(len(present), maps)]
    return [_Unit(c, sorted(by_channel[c], key=lambda r: int(r["rank"]))[:9]) for c in wanted]


# ---------------------------------------------------------------- pages


def _page(title: str, body: str, nav: Sequence[tuple[str, str]] = (), script: str = "") -> str:
    links = "".join(f'<a href="{href}"{rel}>{html.escape(text)}</a>' for href, text, rel in _nav(nav))
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><nav>{links}</nav>\n<h1>{html.escape(title)}</h1>\n{body}\n{js}</body></html>\n"
    )


def _nav(nav: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(href, text) pairs; the texts "previous" / "next" get rel=prev / rel=next for the arrow keys."""
    rel = {"previous": ' rel="prev"', "next": ' rel="next"'}
    return [(href, text, rel.get(text.split(" ")[0], "")) for href, text in nav]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _img(src: str, alt: str, side: int, lazy: bool = False) -> str:
    loading = ' loading="lazy"' if lazy else ""
    return f'<img src="{src}" alt="{html.escape(alt)}" width="{side}" height="{side}"{loading}>'


def _figure(src: str, alt: str, caption: str, side: int) -> str:
    caption = html.escape(caption)
    return f'<figure>{_img(src, alt, side)}<figcaption title="{caption}">{caption}</figcaption></figure>'


def _wide(src: str, title: str) -> str:
    return f'<h2>{html.escape(title)}</h2><div class="wide"><img src="{src}" alt="{html.escape(title)}"></div>'


def _unit_name(channel: int) -> str:
    return f"u{channel:04d}"


def _copy_png(src: str | Path, dst: Path) -> str:
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"atlas figure {src} does not exist (expected a PNG file)")
    with src.open("rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise ValueError(f"atlas figure {src} is not a PNG file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst.name


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
        figures[name] = _copy_png(png, folder / "img" / f"figure{k}.png")
    for i, unit in enumerate(units):
        _write(folder / f"{_unit_name(unit.channel)}.html", _unit_page(layer, units, i, rf, units[i].channel in evolved))
    _write(folder / "index.html", _layer_page(layer, units, rf, figures))
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


def _layer_page(layer: str, units: list[_Unit], rf: tuple[int, int, int], figures: Mapping[str, str]) -> str:
    side = 3 * THUMB_TILE + 2 * GAP
    cells = "".join(
        f'<a id="m{u.channel}" href="{_unit_name(u.channel)}.html" title="map {u.channel}: top activation {u.top:.3g}">'
        f'{_img(f"img/{_unit_name(u.channel)}_thumb.png", f"{layer} map {u.channel}", side, lazy=True)}{u.channel}</a>'
        for u in units
    )
    body = (
        f'<p>{len(units)} feature maps; each thumbnail shows the deconvnet projections of its top 9 activations. '
        f'Receptive field {rf[0]} px, stride {rf[1]} px. Use the arrow keys on a map\'s page to walk the layer.</p>'
        f'<form id="goto">Go to map <input name="c" size="8" inputmode="numeric"> <button>go</button></form>'
        + "".join(_wide(f"img/{src}", name) for name, src in figures.items())
        + f'<h2>Feature maps</h2><div class="maps">{cells}</div>'
    )
    return _page(f"Layer {layer.removeprefix('conv')} ({layer})", body, [("../index.html", "atlas")], GOTO_JS)


def _unit_page(layer: str, units: list[_Unit], i: int, rf: tuple[int, int, int], has_evolution: bool) -> str:
    unit = units[i]
    name = _unit_name(unit.channel)
    entries = unit.entries + [None] * (9 - len(unit.entries))

    def caption(e: dict | None) -> str:
        return "—" if e is None else f"#{int(e['rank'])}  {float(e['value']):.3g}  {e['image_id']}"

    def grid(kind: str, what: str, heading: str) -> str:
        figs = "".join(
            _figure(f"img/{name}_{kind}{k + 1}.png", f"{what} {k + 1} of {layer} map {unit.channel}", caption(e), DISPLAY)
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
        body += f'<h2>Filter</h2>{_img(f"img/{name}_filter.png", f"conv1 filter {unit.channel}", DISPLAY)}'
    body += f'<div class="pair">{grid("p", "projection", "Projections")}{grid("i", "image patch", "Image patches")}</div>'
    if has_evolution:
        body += _wide(f"img/{name}_evolution.png", "Evolution over training (Fig. 3)")
    return _page(f"{layer} map {unit.channel}", body, nav, KEYS_JS)


def _write_figures_page(site: Path, extras: AtlasExtras) -> bool:
    if not extras.figures:
        return False
    parts = [_wide(f"figures/{_copy_png(png, site / 'figures' / f'figure{k}.png')}", name)
             for k, (name, png) in enumerate(extras.figures.items())]
    _write(site / "figures.html", _page("Figures", "".join(parts), [("index.html", "atlas")]))
    return True


def _write_tables_page(site: Path, extras: AtlasExtras) -> bool:
    if not extras.tables:
        return False
    parts = [f"<h2>{html.escape(name)}</h2>{table_html(text)}" for name, text in extras.tables.items()]
    _write(site / "tables.html", _page("Tables", "".join(parts), [("index.html", "atlas")]))
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
        f"<table><tr><th>layer</th><th>maps</th><th>receptive field / stride</th><th>top activation</th></tr>{lines}</table>"
    )
    nav = [("figures.html", "figures")] * has_figures + [("tables.html", "tables")] * has_tables
    _write(site / "index.html", _page(title, body, nav))


# ---------------------------------------------------------------- tables

_SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?$")


def table_html(text: str) -> str:
    """A table for the atlas: HTML (starting with ``<``) as it is; markdown pipe tables converted, other
    markdown lines as escaped paragraphs."""
    if text.lstrip().startswith("<"):
        return text
    out, table = [], []
    for line in text.strip().splitlines() + [""]:
        if line.strip().startswith("|"):
            table.append(line.strip())
            continue
        if table:
            out.append(_pipe_table(table))
            table = []
        if line.strip():
            out.append(f"<p>{html.escape(line.strip())}</p>")
    return "".join(out)


def _pipe_table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]

    head, rows = cells(lines[0]), [cells(line) for line in lines[1:] if not _SEPARATOR.match(line)]
    thead = "".join(f"<th>{c}</th>" for c in head)
    tbody = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{thead}</tr>{tbody}</table>"


__all__ = ["AtlasExtras", "TOP9_COLUMNS", "build_atlas", "table_html"]
