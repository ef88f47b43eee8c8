"""Top-k mining with DuckDB against a brute-force answer, ties included; the asset-check helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from zf_pipeline.features import ACTIVATION_WRITE_OPTIONS, activation_table, extract
from zf_pipeline.mining import check_activation_counts, check_top_counts, mine_top9
from zf_pipeline.models.zfnet import build, variant


def write_layer(
    root: Path,
    layer: str,
    ids: list[str],
    labels: np.ndarray,
    value: np.ndarray,
    pos: np.ndarray,
    side: int,
    files: int = 3,
) -> None:
    """An activations partition split over several files with small row groups, as the writer lays it out."""
    folder = root / f"layer={layer}"
    folder.mkdir(parents=True)
    for part, rows in enumerate(np.array_split(np.arange(len(ids)), files)):
        table = activation_table([ids[i] for i in rows], labels[rows], value[rows], pos[rows] // side, pos[rows] % side)
        pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=97, **ACTIVATION_WRITE_OPTIONS)


def brute_force(
    ids: list[str], labels: np.ndarray, value: np.ndarray, pos: np.ndarray, side: int, k: int
) -> list[tuple]:
    rows = []
    for c in range(value.shape[1]):
        order = sorted(range(len(ids)), key=lambda i: (-float(value[i, c]), ids[i]))[:k]
        for rank, i in enumerate(order, 1):
            rows.append(
                (c, rank, ids[i], int(labels[i]), float(value[i, c]), int(pos[i, c] // side), int(pos[i, c] % side))
            )
    return rows


@pytest.fixture
def tied_activations(tmp_path: Path):
    """Random activations drawn from few distinct values, so ties are everywhere, with the hard cases built in."""
    rng = np.random.default_rng(7)
    layers = {}
    root = tmp_path / "activations"
    for layer, (n, channels, side) in {"conv1": (300, 12, 7), "conv5": (200, 6, 3), "fc6": (5, 4, 1)}.items():
        ids = [f"img{j:05d}" for j in rng.permutation(n)]  # stream order is not id order
        ids[3] = "img"  # a prefix of other ids sorts before them
        labels = rng.integers(0, 10, n)
        value = rng.integers(0, 6, (n, channels)).astype(np.float16) / 2
        if channels > 5:
            value[:, 0] = 0  # a dead map: every image ties at 0
            value[:, 1] = 1.5  # every image ties at the same non-zero value
            value[:, 2] = np.where(rng.random(n) < 0.1, 3.0, 1.0)  # ~30 images tie for the top 9
            value[:4, 3] = 7.25  # 4 clear winners, then the rest of the map ties at 2
            value[4:, 3] = 2.0
        pos = rng.integers(0, side * side, (n, channels))
        write_layer(root, layer, ids, labels, value, pos, side)
        layers[layer] = (ids, labels, value, pos, side)
    return root, layers


@pytest.mark.parametrize("k, sample_images", [(9, 10_000), (9, 1), (9, 40), (1, 40), (20, 10_000)])
def test_top_k_equals_brute_force_with_ties(tied_activations, tmp_path: Path, k: int, sample_images: int) -> None:
    """Whatever the sample of step 1 (all rows, one row group, a few), the result is the exact top k."""
    root, layers = tied_activations
    out = tmp_path / "top.parquet"
    rows = mine_top9(root, out, k=k, threads=2, sample_images=sample_images)
    got = pq.read_table(out).to_pylist()
    assert rows == len(got)
    for layer, data in layers.items():
        expected = brute_force(*data, k=k)
        actual = [
            (r["channel"], r["rank"], r["image_id"], r["label"], r["value"], r["y"], r["x"])
            for r in got
            if r["layer"] == layer
        ]
        assert actual == expected, layer
    assert sum(1 for r in got if r["layer"] == "fc6") == 4 * min(k, 5)  # fewer images than k: all of them


def test_missing_activations_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="layer=<name>"):
        mine_top9(tmp_path, tmp_path / "top.parquet")
    assert not (tmp_path / "top.parquet").exists()


@pytest.fixture(scope="module")
def extraction(tmp_path_factory) -> Path:
    model = build(variant("krizhevsky", width=0.0625, num_classes=5, input_size=64), seed=1)
    images = torch.randn(12, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ids = [f"im{i:02d}" for i in range(12)]
    batches = [(images[i : i + 5], torch.arange(i, min(12, i + 5)) % 5, ids[i : i + 5]) for i in range(0, 12, 5)]
    out = tmp_path_factory.mktemp("checks") / "val"
    extract(model, batches, out, split="val", layers=("conv2", "fc7"), activation_layers=("conv1", "conv5"))
    return out


def test_checks_pass_on_a_fresh_extraction(extraction: Path) -> None:
    assert mine_top9(extraction / "activations", extraction / "top9.parquet") == 9 * (6 + 16)
    ok, message = check_top_counts(extraction / "top9.parquet", extraction)
    assert ok, message
    ok, message = check_activation_counts(extraction)
    assert ok, message


def test_checks_fail_on_damaged_tables(extraction: Path, tmp_path: Path) -> None:
    mine_top9(extraction / "activations", extraction / "top9.parquet")
    top = pq.read_table(extraction / "top9.parquet")
    pq.write_table(top.slice(1), tmp_path / "short.parquet")  # conv1/0 lost its rank 1
    ok, message = check_top_counts(tmp_path / "short.parquet", extraction)
    assert not ok and "conv1/0" in message

    damaged = tmp_path / "damaged"
    shutil.copytree(extraction, damaged)
    part = damaged / "activations" / "layer=conv5" / "part-00000.parquet"
    pq.write_table(pq.read_table(part).slice(3), part)
    ok, message = check_activation_counts(damaged)
    assert not ok and "conv5" in message and "12 images" in message
