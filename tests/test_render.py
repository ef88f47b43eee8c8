"""Figures: PNGs of the expected sizes, and the Fig. 8 tiles hold what the top-9 rows point at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zf_pipeline.analysis.correspondence import PartImage, PartsConfig, correspondence
from zf_pipeline.analysis.invariance import invariance_sweep
from zf_pipeline.analysis.occlusion import occlusion_sensitivity
from zf_pipeline.models.zfnet import ZFNet, receptive_field, variant
from zf_pipeline.render import (
    choose_maps,
    image_to_rgb,
    normalize_projection,
    render_fig3,
    render_fig4,
    render_fig5,
    render_fig8,
    render_table2,
    render_table3,
    shown_rows,
    top9_tiles,
    unit_patch,
)
from zf_pipeline.render.common import EMPTY_TILE
from zf_pipeline.render.fig8 import compose_vertical, render_top9_grid


def small_net(input_size: int = 67) -> ZFNet:
    torch.manual_seed(0)
    return ZFNet(variant("krizhevsky", width=0.06, num_classes=4, fc_units=32, input_size=input_size)).eval()


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def mine_top(model: ZFNet, images: dict[str, torch.Tensor], layer: str, channels: list[int], k: int) -> list[dict]:
    """A brute-force top-k table in the features engineer's schema (layer, channel, rank, image_id, value, y, x)."""
    ids = list(images)
    with torch.no_grad():
        act = model.forward_layers(torch.stack([images[i] for i in ids]), [layer])[layer]
    rows = []
    for c in channels:
        value, flat = act[:, c].flatten(1).max(1)
        for rank, n in enumerate(value.argsort(descending=True)[:k].tolist(), 1):
            y, x = divmod(int(flat[n]), act.shape[-1])
            rows.append(
                {
                    "layer": layer,
                    "channel": c,
                    "rank": rank,
                    "image_id": ids[n],
                    "value": float(value[n]),
                    "y": y,
                    "x": x,
                }
            )
    return rows


def test_unit_patch_cuts_the_receptive_field_and_pads_outside() -> None:
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 6, 6)
    inside = unit_patch(x, (3, 2, 0), 1, 1)
    torch.testing.assert_close(inside, x[:, 2:5, 2:5])
    edge = unit_patch(x, (4, 2, -1), 0, 0, fill=-1.0)  # rows/cols -1..2
    assert (edge[:, 0, :] == -1).all() and (edge[:, :, 0] == -1).all()
    torch.testing.assert_close(edge[:, 1:, 1:], x[:, 0:3, 0:3])


def test_choose_maps_is_a_fixed_sample() -> None:
    picked = choose_maps(96, 16, seed=3)
    assert len(picked) == 16 == len(set(picked)) and picked == sorted(picked) and max(picked) < 96
    assert picked == choose_maps(96, 16, seed=3) and picked != choose_maps(96, 16, seed=4)
    assert choose_maps(10, None) == choose_maps(10, 50) == list(range(10))


def test_normalize_projection_keeps_zero_grey_and_sign() -> None:
    p = torch.zeros(2, 3, 4, 4)
    p[0, 0, 1, 1], p[0, 1, 2, 2] = 2.0, -1.0
    p[1, 2, 0, 0] = 1e-3
    n = normalize_projection(p, clip=1.0)
    assert n[0, 0, 1, 1] == 1.0 and n[0, 1, 2, 2] == 0.25 and n[0, 2, 3, 3] == 0.5
    assert n[1, 2, 0, 0] == 1.0  # each projection uses the full range on its own
    assert normalize_projection(torch.zeros(3, 4, 4)).eq(0.5).all()


def test_normalize_projection_is_not_washed_out_by_a_few_extreme_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(3, 32, 32, generator=gen)
    p[0, 0, 0] = 1000.0  # one spike, 300x the rest

    def contrast(n: torch.Tensor) -> float:
        return (n - 0.5).abs().flatten()[1:].mean().item()

    assert contrast(normalize_projection(p, clip=1.0)) < 0.01  # max|p|: all but the spike is grey
    robust = normalize_projection(p)
    assert contrast(robust) > 0.1 and robust[0, 0, 0] == 1.0 and robust.min() >= 0 and robust.max() <= 1


def test_top9_grids_for_layers_1_and_2(tmp_path: Path) -> None:
    model = small_net()
    gen = torch.Generator().manual_seed(5)
    images = {f"img{i}": torch.randn(3, 67, 67, generator=gen) for i in range(5)}
    rows = mine_top(model, images, "conv1", [0, 1, 4], k=3) + mine_top(model, images, "conv2", [2, 3, 5], k=9)
    paths = []
    for layer, blocks in (("conv1", 3), ("conv2", 2)):
        rf = receptive_field(model, layer)
        tiles = top9_tiles(model, layer, rows, images.__getitem__, rf)
        assert tiles.projections.shape == (3, 9, 3, rf[0], rf[0])
        assert (tiles.filters is not None) == (layer == "conv1")
        paths.append(render_top9_grid(tiles, tmp_path / f"{layer}.png", tile=10, columns=2))
        block = 3 * 10 + 2 * 2
        cell = blocks * block + (blocks - 1) * 6
        assert size_of(paths[-1]) == (2 * cell + 3 * 12, 2 * block + 3 * 12)
    # conv1 has only 3 of 9 entries per map: the rest stay empty grey; the present ones are not flat.
    tiles = top9_tiles(model, "conv1", rows, images, receptive_field(model, "conv1"), channels=[4])
    assert (tiles.projections[0, 3:] == EMPTY_TILE).all()
    assert all(float(t.std()) > 0 for t in tiles.projections[0, :3])
    r = next(r for r in rows if r["layer"] == "conv1" and r["channel"] == 4 and r["rank"] == 2)
    torch.testing.assert_close(
        tiles.patches[0, 1],
        unit_patch(image_to_rgb(images[r["image_id"]]), receptive_field(model, "conv1"), r["y"], r["x"]),
    )
    with pytest.raises(KeyError, match="conv2 maps \\[7\\]"):
        top9_tiles(model, "conv2", rows, images, receptive_field(model, "conv2"), channels=[7])

    composed = compose_vertical(paths, ["Layer 1", "Layer 2"], tmp_path / "fig8.png")
    (w1, h1), (w2, h2) = size_of(paths[0]), size_of(paths[1])
    assert size_of(composed) == (max(w1, w2), h1 + h2 + 2 * 24)


def test_render_fig8_samples_maps_and_composes(tmp_path: Path) -> None:
    model = small_net()
    gen = torch.Generator().manual_seed(6)
    images = {f"img{i}": torch.randn(3, 67, 67, generator=gen) for i in range(3)}
    rows = mine_top(model, images, "conv1", list(range(5)), k=2) + mine_top(model, images, "conv2", [0, 1], k=2)
    paths = render_fig8(model, rows, images, tmp_path / "fig8", maps=3, tile=8, columns=3)
    assert set(paths) == {"conv1", "conv2", "composed"}
    block = 3 * 8 + 2 * 2
    assert size_of(paths["conv1"]) == (3 * (3 * block + 2 * 6) + 4 * 12, block + 2 * 12)  # 3 of the 5 maps
    assert size_of(paths["conv2"]) == (2 * (2 * block + 6) + 3 * 12, block + 2 * 12)  # only 2 maps exist
    assert size_of(paths["composed"])[1] == size_of(paths["conv1"])[1] + size_of(paths["conv2"])[1] + 2 * 24
    with pytest.raises(ValueError, match="conv5"):
        render_fig8(model, rows, images, tmp_path / "none", layers=("conv5",))


def test_fig8_needs_only_the_images_of_the_maps_it_shows(tmp_path: Path) -> None:
    model = small_net()
    gen = torch.Generator().manual_seed(7)
    images = {f"img{i}": torch.randn(3, 67, 67, generator=gen) for i in range(12)}
    rows = mine_top(model, images, "conv1", list(range(5)), k=2) + mine_top(model, images, "conv2", [0, 1], k=2)
    shown = shown_rows(rows, ("conv1",), maps=2, seed=1)
    channels = choose_maps(5, 2, seed=1)
    assert {(r["layer"], r["channel"]) for r in shown} == {("conv1", c) for c in channels}
    assert len(shown) == 2 * 2
    assert shown_rows(rows, ("conv1", "conv2"), maps=None) == [r for r in rows]  # every map of both layers
    needed = {r["image_id"] for r in shown}
    assert needed < set(images)
    # Rendering from the shown rows with only their images draws the same maps as from the full table.
    kept = {i: images[i] for i in needed}
    paths = render_fig8(model, shown, kept, tmp_path / "a", layers=("conv1",), maps=2, seed=1, tile=8)
    full = render_fig8(model, rows, images, tmp_path / "b", layers=("conv1",), maps=2, seed=1, tile=8)
    assert np.array_equal(np.asarray(Image.open(paths["conv1"])), np.asarray(Image.open(full["conv1"])))


def test_top9_rows_from_a_pyarrow_table(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    model = small_net()
    gen = torch.Generator().manual_seed(2)
    images = {f"i{i}": torch.randn(3, 67, 67, generator=gen) for i in range(3)}
    rows = mine_top(model, images, "conv3", [0, 1], k=2)
    tiles = top9_tiles(model, "conv3", pa.Table.from_pylist(rows), images, receptive_field(model, "conv3"))
    assert tiles.channels == [0, 1] and tiles.filters is None


def test_evolution_occlusion_invariance_and_table3_pngs(tmp_path: Path) -> None:
    model = small_net()
    proj = torch.randn(3, 2, 3, 67, 67)
    ys, xs = torch.ones(3, 2, dtype=torch.long), torch.full((3, 2), 2)
    path = render_fig3(proj, ys, xs, receptive_field(model, "conv2"), [1, 5], tmp_path / "fig3.png", tile=16)
    assert size_of(path) == (2 * 16 + 3 * 2, 24 + 3 * 16 + 4 * 2)
    with pytest.raises(ValueError, match="epoch"):
        render_fig3(proj, ys, xs, receptive_field(model, "conv2"), [1], tmp_path / "x.png")

    image = torch.randn(3, 67, 67, generator=torch.Generator().manual_seed(3))
    occ = occlusion_sensitivity(model, image, label=1, size=20, stride=12)
    path = render_fig5(image_to_rgb(image), occ, tmp_path / "fig5.png", class_names=["a", "b", "c", "d"],
                            receptive_field=receptive_field(model, "conv5"))
    assert size_of(path) == (1500, 340)

    imgs = torch.randn(2, 3, 67, 67, generator=torch.Generator().manual_seed(4))
    sweeps = [
        invariance_sweep(model, imgs, [0, 1], "translation", [0, 8]),
        invariance_sweep(model, imgs, [0, 1], "rotation", [0, 90]),
    ]
    assert size_of(render_fig4(sweeps, tmp_path / "fig4.png")) == (1200, 600)

    config = PartsConfig(
        [PartImage("a", {"eye": (5, 5, 15, 15)}), PartImage("b", {"eye": (30, 30, 40, 40)})],
        random_draws=2,
        parts=("eye",),
    )
    rows = correspondence(model, imgs, config)
    assert size_of(render_table3(rows, tmp_path / "table3.png")) == (540, 140)
    sizes = [{"models": k, "top1_err": 25.0 - k / 2, "top1_err_min": 24.5 - k / 2, "top1_err_max": 25.5 - k / 2}
             for k in (1, 2, 3)]
    assert size_of(render_table2(sizes, tmp_path / "table2.png")) == (600, 432)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.realdata
def test_fig8_layers_1_and_2_on_real_images(shared_data: Path, tmp_path: Path) -> None:
    files = sorted((shared_data / "imagenette" / "val").glob("*/*.JPEG"))[:: 400][:8]
    assert len(files) >= 4, f"too few JPEGs under {shared_data / 'imagenette' / 'val'}"

    def load(path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            x = torch.from_numpy(np.asarray(im.convert("RGB").resize((224, 224)), dtype=np.float32)).permute(2, 0, 1)
        return x - x.mean((1, 2), keepdim=True)

    images = {p.stem: load(p) for p in files}
    model = small_net(input_size=224)
    for layer in ("conv1", "conv2"):
        rows = mine_top(model, images, layer, [0, 1, 2, 3], k=9)
        tiles = top9_tiles(model, layer, rows, images, receptive_field(model, layer))
        path = render_top9_grid(tiles, tmp_path / f"{layer}.png", tile=24)
        assert size_of(path)[0] > 0 and tiles.patches.std() > 0
