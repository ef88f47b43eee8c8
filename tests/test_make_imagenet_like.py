"""benchmarks/make_imagenet_like.py: the ImageNet-layout load-test data generator (its CLI, end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zf_pipeline.data.imagenet import BUILTIN_SYNSETS, read_imagenet

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "make_imagenet_like.py"
OPTIONS = ("--train", "50", "--val", "20", "--unique", "30", "--classes", "10")
WNIDS = [line.split("\t", 1)[0] for line in BUILTIN_SYNSETS.read_text().splitlines()][:10]


def generate(out: Path, sources: list[Path], *OPTIONS: str) -> dict:
    """Run the CLI; its last stdout line is the JSON summary."""
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--sources", *map(str, sources), *OPTIONS]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stderr  # the progress line
    return json.loads(result.stdout.strip().splitlines()[-1])


def files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """Two folders of small smooth photos, a JPEG per seed (the generator also reads .jpg, any case)."""
    root = tmp_path_factory.mktemp("sources")
    for folder, suffix, count in (("a", ".JPEG", 6), ("b", ".jpg", 4)):
        for seed in range(count):
            rng = np.random.default_rng(seed)
            small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
            path = root / folder / f"photo{seed}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            small.resize((224 + 20 * seed, 180), Image.Resampling.BICUBIC).save(path, quality=90)
    return [root / "a", root / "b"]


@pytest.fixture(scope="module")
def made(tmp_path_factory, sources):
    out = tmp_path_factory.mktemp("like") / "imagenet"
    return out, generate(out, sources, *OPTIONS, "--workers", "2")


def test_layout_counts_and_links(made):
    out, summary = made
    counts = {key: summary[key] for key in ("images", "train", "val", "unique", "encoded", "linked", "existing")}
    assert counts == {"images": 70, "train": 50, "val": 20, "unique": 50, "encoded": 50, "linked": 20, "existing": 0}
    train = sorted((out / "train").rglob("*.JPEG"))
    val = sorted((out / "val").rglob("*.JPEG"))
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(WNIDS) and len(train) == 50 and len(val) == 20
    # Entry i: class i mod 10, number i // 10 in it; entries >= 30 are hard links to entry i mod 30.
    entry = {i: out / "train" / WNIDS[i % 10] / f"{WNIDS[i % 10]}_{i // 10}.JPEG" for i in range(50)}
    assert set(entry.values()) == set(train)
    for i in range(30, 50):
        assert entry[i].stat().st_ino == entry[i % 30].stat().st_ino
    distinct = {p.stat().st_ino: p.stat().st_size for p in train + val}
    assert len(distinct) == 50 and summary["bytes"] == sum(distinct.values())
    assert (out / "val" / WNIDS[3] / "ILSVRC2012_val_00000004.JPEG").exists()
    digests = set()
    for path in [entry[i] for i in range(30)] + val:
        image = Image.open(path)
        assert image.format == "JPEG" and image.mode == "RGB" and all(375 <= side <= 500 for side in image.size)
        digests.add(path.read_bytes())
    assert len(digests) == 50, "two generated images are identical"
    assert not [p for p in out.rglob(".*")], "a temporary was left behind"


def test_the_imagenet_reader_reads_it(made):
    out, _ = made
    train, val = read_imagenet(out, "train"), read_imagenet(out, "val")
    assert (len(train), len(val)) == (50, 20) and train.classes == sorted(WNIDS) == val.classes
    assert {record.class_id for record in val.records} == set(WNIDS)
    assert all(train.classes[record.label] == record.class_id for record in train.records + val.records)


def test_same_bytes_for_any_worker_count_and_resumes(made, sources, tmp_path):
    out, _ = made
    again = tmp_path / "imagenet"
    generate(again, sources, *OPTIONS, "--workers", "1")
    assert files(again) == files(out)
    # A killed run: a file and a link missing, a temporary left; the rerun redoes only those two.
    removed = [again / "train" / WNIDS[2] / f"{WNIDS[2]}_1.JPEG", again / "train" / WNIDS[5] / f"{WNIDS[5]}_4.JPEG"]
    for path in removed:
        path.unlink()
    kept = again / "val" / WNIDS[0] / "ILSVRC2012_val_00000001.JPEG"
    inode = kept.stat().st_ino
    summary = generate(again, sources, *OPTIONS, "--workers", "2")
    assert (summary["encoded"], summary["linked"], summary["existing"]) == (1, 1, 68)
    assert kept.stat().st_ino == inode and files(again) == files(out)
    other_seed = generate(tmp_path / "seed1", sources, *OPTIONS, "--seed", "1", "--workers", "2")
    assert other_seed["encoded"] == 50 and files(tmp_path / "seed1") != files(out)


@pytest.mark.realdata
def test_from_the_shared_photos(shared_data, tmp_path):
    sources = [shared_data / "imagenette", shared_data / "caltech101"]
    options = ("--train", "12", "--val", "4", "--classes", "4", "--workers", "2")
    summary = generate(tmp_path / "imagenet", sources, *options)
    assert summary["encoded"] == 16 and 20_000 < summary["bytes"] / 16 < 200_000
    assert len(read_imagenet(tmp_path / "imagenet", "train")) == 12
