"""Sharded extraction: processes over shards[rank::2], merged, equal one process; torchrun's variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.shard_writer import write_mean, write_split
from tests.test_features import read
from zf_pipeline.distributed import DistEnv, dist_env
from zf_pipeline.features import SUMMARY_FILE, ExtractionSummary, merge_parts, parts_dir
from zf_pipeline.models.checkpoint import save_checkpoint
from zf_pipeline.models.zfnet import build, variant

SIZE, CROP = 72, 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A 6-shard split of 24 random images, its mean, and a small net's checkpoint."""
    d = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(24)]
    split = write_split(images, [i % 3 for i in range(24)], d / "val", "val", ["a", "b", "c"], size=SIZE, per_shard=4)
    write_mean(split, d / "mean.npy")
    arch = variant("krizhevsky", width=0.0625, num_classes=3, input_size=CROP)
    save_checkpoint(d / "net.pt", build(arch, seed=0), arch, epoch=0)
    return {"shards": split, "mean": d / "mean.npy", "checkpoint": d / "net.pt"}


def run_ranks(inputs: dict[str, Path], out: Path, world: int) -> None:
    """``world`` processes side by side, as torchrun would start them, then the merge."""
    cmd = [sys.executable, "-m", "zf_pipeline.features", "extract", "--checkpoint", str(inputs["checkpoint"]),
           "--shards", str(inputs["shards"]), "--mean", str(inputs["mean"]), "--split", "val", "--out", str(out),
           "--crop", str(CROP), "--batch-size", "5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    merge_parts(out)


def test_two_ranks_merged_equal_one_process(inputs, tmp_path: Path) -> None:
    run_ranks(inputs, tmp_path / "one", 1)
    run_ranks(inputs, tmp_path / "two", 2)
    one, two = tmp_path / "one", tmp_path / "two"
    assert not parts_dir(two).exists()
    names = {f.name for f in (two / "activations" / "layer=conv1").iterdir()}
    assert {n.split("-")[1] for n in names} == {"00000", "00001"}  # each rank wrote its own part files
    for table in ("activations", "features"):
        a, b = read(one, table), read(two, table)
        assert len(a) > 0 and a == b, table
    s1, s2 = ExtractionSummary.load(one), ExtractionSummary.load(two)
    assert s1.images == s2.images == 24 and s1.activation_rows == s2.activation_rows


def test_merge_refuses_a_missing_or_unfinished_rank(inputs, tmp_path: Path) -> None:
    out = tmp_path / "feat"
    parts = parts_dir(out)
    (parts / "rank-00000-of-00002").mkdir(parents=True)
    with pytest.raises(ValueError, match="one complete part per rank"):
        merge_parts(out)
    (parts / "rank-00001-of-00002").mkdir()
    with pytest.raises(FileNotFoundError, match=SUMMARY_FILE):
        merge_parts(out)
    assert not out.exists()


def test_rank_outside_the_world_is_an_error(inputs, tmp_path: Path) -> None:
    from zf_pipeline.data.loader import open_split
    from zf_pipeline.features import extract_part

    with pytest.raises(ValueError, match="rank 2"):
        extract_part(
            build(variant("krizhevsky", width=0.0625, num_classes=3, input_size=CROP)),
            open_split(inputs["shards"]),
            torch.zeros(3, SIZE, SIZE),
            tmp_path / "x",
            rank=2,
            world_size=2,
            crop=CROP,
            split="val",
        )


def test_rank_and_world_come_from_torchrun_variables(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert dist_env() == (0, 1, 0)  # not under torchrun: one process
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == DistEnv(rank=3, world_size=4, local_rank=1)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="WORLD_SIZE='four'"):
        dist_env()


def test_a_summary_of_another_layout_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / SUMMARY_FILE).write_text('{"split": "val", "images": 4, "k": 9, "layers": {}}')
    with pytest.raises(ValueError, match=f"{SUMMARY_FILE}: not an extraction summary of this version"):
        ExtractionSummary.load(tmp_path)
