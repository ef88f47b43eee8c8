"""Batch sources: the decoded cache and the shard stream give the same batches; auto picks by memory; bad JPEGs."""

from __future__ import annotations

import gc
import logging
import shutil

import numpy as np
import pytest
import torch
from shard_writer import write_split

from zf_pipeline.data.loader import DecodedCache, make_source, open_split
from zf_pipeline.data.records import tar_members
from zf_pipeline.data.stream import ShardStream

SIZE = 40
CLASSES = ["a", "b", "c"]


def _images(n: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)], [i % 3 for i in range(n)]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """40 images in 5 shards of 8: two DDP ranks get 3 and 2 shards."""
    root = tmp_path_factory.mktemp("stream")
    return open_split(write_split(*_images(40, 0), root / "train", "train", CLASSES, size=SIZE, per_shard=8))


def _epoch(src, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in src.epoch(epoch)]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world", [1, 2])
def test_stream_yields_the_caches_batches_per_epoch_seed_and_rank(split, workers, shuffle, world):
    for rank in range(world):
        kw = dict(shuffle=shuffle, seed=3, rank=rank, world_size=world)
        cache = DecodedCache(split, 4, **kw)
        stream = ShardStream(split, 4, workers=workers, **kw)
        try:
            epochs = [_epoch(stream, e) for e in (0, 1)]
            assert _same(epochs[0], _epoch(cache, 0)) and _same(epochs[1], _epoch(cache, 1))
            assert len(epochs[0]) == len(stream) == len(cache)
            if shuffle:
                assert not _same(epochs[0], epochs[1])  # a new order every epoch
        finally:
            stream.close()


def test_ranks_take_disjoint_shards_and_equal_training_steps(split):
    ranks = [ShardStream(split, 4, shuffle=True, rank=r, world_size=2) for r in (0, 1)]
    assert set(ranks[0].shards).isdisjoint(ranks[1].shards)
    assert [len(r.index) for r in ranks] == [24, 16]
    assert [sum(1 for _ in r.epoch(0)) for r in ranks] == [4, 4]  # lockstep: the smaller rank's 16 // 4
    evals = [ShardStream(split, 5, shuffle=False, rank=r, world_size=2) for r in (0, 1)]
    assert [sum(len(y) for _, y in r.epoch(0)) for r in evals] == [24, 16]  # evaluation sees every image


@pytest.fixture
def corrupt(split, tmp_path):
    """A copy of the split whose shard 2 holds one sample whose JPEG bytes are not a JPEG."""
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(split.root, root)
    shard = root / split.shards[2].name
    name, member = sorted((n, m) for n, m in tar_members(shard).items() if n.endswith(".jpg"))[3]
    with open(shard, "r+b") as f:
        f.seek(member.offset)
        f.write(b"\0" * 64)
    return open_split(root), f"{shard.name}:{name.split('.')[0]}"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_jpeg_mid_stream_is_skipped_and_counted(corrupt, workers, caplog):
    split, key = corrupt
    stream = ShardStream(split, 4, shuffle=True, workers=workers)
    try:
        with caplog.at_level(logging.WARNING):
            batches = [_epoch(stream, e) for e in (0, 1)]
        for batch in batches:
            assert sum(len(y) for _, y in batch) == 40 - 1  # one image short, nothing else lost
            assert sorted(len(y) for _, y in batch)[:2] == [3, 4]
        assert stream.skipped == [key]
        assert sum(key in r.message for r in caplog.records) == 1  # logged once, not every epoch
    finally:
        stream.close()
    cache = DecodedCache(split, 4, shuffle=True)
    assert cache.skipped == [key] and len(cache.labels) == 39


def test_auto_caches_what_fits_the_budget_and_streams_the_rest(split, caplog):
    one_rank = 40 * 3 * SIZE * SIZE
    with caplog.at_level(logging.INFO):
        assert isinstance(make_source(split, 4, shuffle=True, budget=one_rank), DecodedCache)
        assert "loader auto -> cache" in caplog.text
        caplog.clear()
        assert isinstance(make_source(split, 4, shuffle=True, budget=one_rank - 1), ShardStream)
        assert "loader auto -> stream" in caplog.text and "0.0 GB" in caplog.text
    # Per rank: rank 0 holds 24 images, rank 1 16; a budget of 20 caches on rank 1 only.
    twenty = 20 * 3 * SIZE * SIZE
    kinds = [type(make_source(split, 4, shuffle=True, budget=twenty, rank=r, world_size=2)) for r in (0, 1)]
    assert kinds == [ShardStream, DecodedCache]


def test_unknown_mode_is_refused(split):
    with pytest.raises(ValueError, match="'auto', 'cache' or 'stream'"):
        make_source(split, 4, shuffle=True, mode="gpu")


def test_cache_falls_back_to_the_cpu_where_nvjpeg_cannot_decode(split, monkeypatch, caplog):
    from zf_pipeline.data import loader

    def no_nvjpeg(raw, device):
        raise RuntimeError("nvjpeg is not available in this build")

    monkeypatch.setattr(loader, "decode_jpegs_cuda", no_nvjpeg)
    with caplog.at_level(logging.WARNING):
        images, labels, skipped = loader.decode_split(split, torch.device("cpu"), nvjpeg=True)
    reference = loader.decode_split(split, torch.device("cpu"))
    assert torch.equal(images, reference[0]) and torch.equal(labels, reference[1]) and skipped == []
    assert sum("nvJPEG cannot decode" in r.message for r in caplog.records) == 1


def test_index_of_many_shards_is_scanned_in_parallel_with_the_same_result(split):
    from zf_pipeline.data.stream import SampleIndex

    many = list(split.shards) * 7  # 35 shards: past the threshold where processes scan them
    one = SampleIndex(split.root, list(split.shards))
    pooled = SampleIndex(split.root, many)
    assert len(pooled) == 7 * len(one) == 280
    assert np.array_equal(pooled.where[:40, 1:], one.where[:, 1:]) and torch.equal(pooled.labels[:40], one.labels)
    assert pooled.where[-1, 0] == 34


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_stream_that_cannot_start_raises_only_its_own_error(split, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(split.root, broken)
    (broken / "manifest.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        ShardStream(open_split(broken), 4, shuffle=True, workers=0)
    gc.collect()  # a second error from __del__ would surface here as an unraisable-exception warning
