"""The HTML atlas without a browser: pages, images on disk, relative links, what each tile shows."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from atlas_fixtures import brute_force_top9, tiny_model
from PIL import Image

from zf_pipeline.analysis.evolution import Evolution
from zf_pipeline.atlas import AtlasExtras, build_atlas, table_html
from zf_pipeline.models.zfnet import CONV_LAYERS, ZFNet, receptive_field
from zf_pipeline.render.common import _to_pil
from zf_pipeline.render.fig8 import top9_tiles

N_IMAGES = 12


class Page(HTMLParser):
    """The <img> and <a> elements of one HTML page."""

    def __init__(self, path: Path):
        super().__init__()
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.captions: list[str] = []
        self._in_caption = False
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        self._in_caption = tag == "figcaption"

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.captions.append(data)
            self._in_caption = False


@pytest.fixture(scope="module")
def setup() -> tuple[ZFNet, dict[str, torch.Tensor], list[dict]]:
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    images = {f"img_{k:02d}": torch.randn(3, 112, 112, generator=g) for k in range(N_IMAGES)}
    return model, images, brute_force_top9(model, images)


@pytest.fixture(scope="module")
def site(setup, tmp_path_factory) -> Path:
    model, images, rows = setup
    out = tmp_path_factory.mktemp("atlas") / "site"
    index = build_atlas(out, model, rows, images, mean=torch.full((3, 112, 112), 0.5))
    assert index == out / "index.html"
    return out


def test_every_layer_and_unit_page_exists(setup, site: Path) -> None:
    model, _, rows = setup
    index = Page(site / "index.html")
    assert [link for link in index.links if link.endswith("/index.html")] == [
        f"{layer}/index.html" for layer in CONV_LAYERS
    ]
    for layer in CONV_LAYERS:
        channels = model.get_submodule(layer).out_channels
        page = Page(site / layer / "index.html")
        thumbs = [img for img in page.imgs if img["src"].endswith("_thumb.png")]
        assert len(thumbs) == channels and all(img.get("loading") == "lazy" and img.get("width") for img in thumbs)
        assert sorted(link for link in page.links if link.startswith("u")) == [
            f"u{c:04d}.html" for c in range(channels)
        ]
        assert all((site / layer / f"u{c:04d}.html").is_file() for c in range(channels))


def test_unit_pages_show_nine_projections_and_nine_patches_with_captions(setup, site: Path) -> None:
    _, _, rows = setup
    for layer in CONV_LAYERS:
        for unit in sorted(site.joinpath(layer).glob("u*.html")):
            page = Page(unit)
            channel = int(unit.stem[1:])
            proj = [img["src"] for img in page.imgs if re.search(r"_p\d\.png$", img["src"])]
            patch = [img["src"] for img in page.imgs if re.search(r"_i\d\.png$", img["src"])]
            assert len(proj) == 9 == len(set(proj)) and len(patch) == 9 == len(set(patch))
            assert all((unit.parent / src).is_file() for src in proj + patch)
            expected = sorted(
                (r for r in rows if r["layer"] == layer and r["channel"] == channel), key=lambda r: r["rank"]
            )
            # Projections and patches are each captioned with rank, value and image id, in rank order.
            assert len(page.captions) == 18
            for caption, r in zip(page.captions, expected + expected, strict=True):
                assert caption.split() == [f"#{r['rank']}", f"{r['value']:.3g}", r["image_id"]]
            assert (layer == "conv1") == any(img["src"].endswith("_filter.png") for img in page.imgs)


def test_layer1_pages_show_the_filters_high_frequency_share(setup, site: Path) -> None:
    from zf_pipeline.analysis.filters import high_frequency_share

    share = high_frequency_share(setup[0].get_submodule("conv1").weight)
    text = (site / "conv1" / "index.html").read_text(encoding="utf-8")
    assert f"<b>{share.nanquantile(0.5).item():.2f}</b>" in text and 'id="filter-quality"' in text
    assert f"high-frequency share {share[3].item():.2f}" in (site / "conv1" / "u0003.html").read_text(encoding="utf-8")
    assert "filter-quality" not in (site / "conv2" / "index.html").read_text(encoding="utf-8")


def test_links_are_relative_and_resolve_and_there_is_no_url(setup, site: Path) -> None:
    model = setup[0]
    pages = list(site.rglob("*.html"))
    assert len(pages) == 1 + len(CONV_LAYERS) + sum(model.get_submodule(layer).out_channels for layer in CONV_LAYERS)
    for path in pages:
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//" not in text.replace("<!doctype", ""), path
        page = Page(path)
        for ref in page.links + [img["src"] for img in page.imgs]:
            assert not ref.startswith(("/", "file:", "data:")) and ":" not in ref, (path, ref)
            target = (path.parent / ref).resolve()
            assert target.is_file() and site.resolve() in target.parents, (path, ref)


def test_tiles_show_the_deconvnet_projection_and_patch_of_each_rank(setup, site: Path) -> None:
    model, images, rows = setup
    mean = torch.full((3, 112, 112), 0.5)
    for layer, channel in (("conv1", 3), ("conv3", 17), ("conv5", 12)):
        rf = receptive_field(model, layer)
        tiles = top9_tiles(model, layer, rows, images, rf, [channel], mean=mean)
        side = min(rf[0], 96)
        for k in (0, 4, 8):
            for kind, t in (("p", tiles.projections), ("i", tiles.patches)):
                with Image.open(site / layer / "img" / f"u{channel:04d}_{kind}{k + 1}.png") as im:
                    np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(_to_pil(t[0, k], side)))
    # A projection is not its patch, and ranks differ from each other.
    a, b = (np.asarray(Image.open(site / "conv3" / "img" / f"u0017_{kind}1.png")) for kind in ("p", "i"))
    assert not np.array_equal(a, b)


def test_maps_and_layers_select_what_is_rendered(setup, tmp_path: Path) -> None:
    model, images, rows = setup
    build_atlas(tmp_path / "a", model, rows, images, layers=["conv2"], maps=4)
    assert sorted(p.name for p in tmp_path.joinpath("a").iterdir()) == ["conv2", "index.html"]
    assert len(list(tmp_path.joinpath("a", "conv2").glob("u*.html"))) == 4
    build_atlas(tmp_path / "b", model, rows, images, layers=["conv4"], maps={"conv4": [5, 1]})
    assert sorted(p.name for p in tmp_path.joinpath("b", "conv4").glob("u*.html")) == ["u0001.html", "u0005.html"]
    # The layer is walked in the given order: map 5 comes first, map 1 next.
    first = Page(tmp_path / "b" / "conv4" / "u0005.html")
    assert "u0001.html" in first.links and not any(link.startswith("u0005") for link in first.links)


def test_extras_pages(setup, tmp_path: Path) -> None:
    model, images, rows = setup
    png = tmp_path / "occlusion.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(png)
    g = torch.Generator().manual_seed(2)
    evolution = Evolution("conv2", [0, 3], [1, 5, 10], torch.randn(2, 3, 3, 112, 112, generator=g),
                          torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    table = "| method | acc % |\n|---|---|\n| ours | 86.5 ± 0.5 |\n| <script> | 1 |\n"
    extras = AtlasExtras(evolution=[evolution], layer_figures={"conv2": {"Fig. 8 grid": png}},
                         figures={"Fig. 5: occlusion": png},
                         tables={"Table 4": table, "Table 6": "<table><tr><td>x</td></tr></table>"})
    out = tmp_path / "site"
    build_atlas(out, model, rows, images, layers=["conv2"], maps={"conv2": [0, 1, 3]}, extras=extras)
    index = Page(out / "index.html")
    assert {"figures.html", "tables.html"} <= set(index.links)
    figures = Page(out / "figures.html")
    assert len(figures.imgs) == 1 and (out / figures.imgs[0]["src"]).read_bytes() == png.read_bytes()
    tables = (out / "tables.html").read_text()
    assert "<td>86.5 ± 0.5</td>" in tables and "<td>&lt;script&gt;</td>" in tables and "<td>x</td>" in tables
    layer = Page(out / "conv2" / "index.html")
    assert {"img/evolution.png", "img/figure0.png"} <= {img["src"] for img in layer.imgs}
    with Image.open(out / "conv2" / "img" / "evolution.png") as im:
        assert im.height > Image.open(out / "conv2" / "img" / "u0000_evolution.png").height
    assert any("evolution" in img["src"] for img in Page(out / "conv2" / "u0003.html").imgs)
    assert not any("evolution" in img["src"] for img in Page(out / "conv2" / "u0001.html").imgs)


def test_table_html_converts_markdown() -> None:
    html = table_html("Caltech-101, 30/class\n\n| a | b |\n|:--|--:|\n| 1 | 2 |\n")
    assert (
        html == "<p>Caltech-101, 30/class</p><table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>"
    )


def test_bad_input_is_named(setup, tmp_path: Path) -> None:
    model, images, rows = setup
    with pytest.raises(ValueError, match="lacks columns \\['rank'\\]"):
        build_atlas(tmp_path / "x", model, [{k: v for k, v in r.items() if k != "rank"} for r in rows], images)
    with pytest.raises(ValueError, match="not 'fc6'"):
        build_atlas(tmp_path / "x", model, rows, images, layers=["fc6"])
    missing = {k: v for k, v in images.items() if k != rows[0]["image_id"]}
    with pytest.raises(KeyError, match=rows[0]["image_id"]):
        build_atlas(tmp_path / "x", model, rows, missing, layers=["conv1"])
    with pytest.raises(ValueError, match=r"expected a \[3, S, S\]"):
        build_atlas(tmp_path / "x", model, rows, {k: v[None] for k, v in images.items()}, layers=["conv1"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        build_atlas(tmp_path / "x", model, rows, images, layers=["conv1"], maps=1,
                    extras=AtlasExtras(figures={"Fig. 4": tmp_path / "nope.png"}))
    (tmp_path / "table.png").write_text("| a |")
    with pytest.raises(ValueError, match="table.png is not a PNG"):
        build_atlas(tmp_path / "x", model, rows, images, layers=["conv1"], maps=1,
                    extras=AtlasExtras(figures={"Table 4": tmp_path / "table.png"}))
    assert not (tmp_path / "x").exists()


def test_rebuild_replaces_the_site_atomically(setup, tmp_path: Path) -> None:
    model, images, rows = setup
    out = tmp_path / "site"
    build_atlas(out, model, rows, images, layers=["conv1"], maps=2)
    (out / "stale.txt").write_text("old")
    build_atlas(out, model, rows, images, layers=["conv2"], maps=2)
    assert not (out / "stale.txt").exists() and not (out / "conv1").exists() and (out / "conv2").is_dir()
    # A failing build leaves the previous site as it was and no temporary folder behind.
    with pytest.raises(KeyError):
        build_atlas(out, model, rows, {}, layers=["conv3"])
    assert (out / "conv2" / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
