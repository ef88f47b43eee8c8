"""Shards -> batches of uint8 images on the training device (the shard format of ``zf_pipeline.data.shards``).

Two sources with one interface (``len(src)`` batches an epoch, ``src.epoch(e)`` yields
``(images uint8 N x 3 x S x S on device, labels int64 on device)``) and the same batches:

- :class:`DecodedCache`: a rank's shards decoded once and held on the device (Imagenette train is
  9,469 x 196 KB = 1.9 GB): no decode at all after the first pass, for splits that fit.
- :class:`~zf_pipeline.data.stream.ShardStream`: JPEGs read in place from the shards and decoded
  again every epoch by worker processes, for splits that do not (ImageNet train: 252 GB decoded).

``make_source(mode="auto")`` picks the cache when the rank's decoded images fit a memory budget. Order
is deterministic given (seed, epoch) (:func:`epoch_order`), and each DDP rank reads its own shards
(``shards[rank::world_size]``). Crops, flips and mean subtraction happen on the device, in
:func:`augment` (training) and ``zf_pipeline.evaluate`` (test).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from zf_pipeline.data.shard_format import IncompleteShards, ShardFormatError, iter_shard, load_summary
from zf_pipeline.data.stream import ShardStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """A complete sharded split: its folder, tar shards, class ids and image count (from summary.json)."""

    root: Path
    shards: tuple[Path, ...]
    classes: tuple[str, ...]
    num_images: int
    size: int


def open_split(root: str | Path) -> Split:
    """Read a shard folder's ``summary.json`` / ``classes.json``; fail clearly if it is incomplete."""
    root = Path(root)
    try:
        summary = load_summary(root)
        classes = json.loads((root / "classes.json").read_text())["classes"]
        shards = tuple(root / name for name in summary["shards"])
        n, size = int(summary["images_written"]), int(summary["size"])
    except IncompleteShards:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise ShardFormatError(f"{root}: summary.json/classes.json not as the shard contract expects: {e}") from e
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise ShardFormatError(f"{root}: shards listed in summary.json are missing: {missing[:3]}")
    return Split(root, shards, tuple(classes), n, size)


def load_mean(path: str | Path, size: int | None = None) -> torch.Tensor:
    """The per-pixel mean image as a float32 3 x S x S tensor (file: float32 (S, S, 3) RGB 0..255)."""
    mean = np.load(path, allow_pickle=False)
    if mean.ndim != 3 or mean.shape[2] != 3 or (size is not None and mean.shape[:2] != (size, size)):
        raise ShardFormatError(f"{path}: mean image has shape {mean.shape}; expected ({size}, {size}, 3)")
    return torch.from_numpy(np.ascontiguousarray(mean.transpose(2, 0, 1), dtype=np.float32))


def epoch_seed(seed: int, epoch: int, *parts: int) -> int:
    """One RNG seed per (seed, epoch, rank, worker, ...): every epoch reshuffles, reproducibly."""
    return hash((seed, epoch, *parts)) & 0x7FFF_FFFF


def rank_shards(split: Split, batch_size: int, shuffle: bool, rank: int, world_size: int) -> tuple[list[Path], int]:
    """A DDP rank's own shards (``shards[rank::world_size]``) and its batches per epoch.

    Training (``shuffle``) takes full batches only, and every rank the same number of them (DDP steps in
    lockstep): the smallest rank's count. Evaluation takes every image of the rank's shards.
    """
    if len(split.shards) < world_size:
        raise ShardFormatError(f"{split.root}: {len(split.shards)} shards cannot feed {world_size} ranks")
    import pyarrow.parquet as pq

    per_shard = Counter(pq.read_table(split.root / "manifest.parquet", columns=["shard"]).column(0).to_pylist())
    images = [sum(per_shard[s.name] for s in split.shards[r::world_size]) for r in range(world_size)]
    steps = min(images) // batch_size if shuffle else -(-images[rank] // batch_size)
    return list(split.shards[rank::world_size]), steps


def epoch_order(n: int, steps: int, batch_size: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The positions (in a rank's stored order) of an epoch's samples, batch after batch.

    One definition for the cache and the stream, so both yield the same batches for (seed, epoch, rank).
    """
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g)[: steps * batch_size]


class DecodedCache:
    """A rank's shards decoded once into one uint8 tensor on ``device``; batches are index gathers."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        threads: int = 8,
    ):
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.device = torch.device(device)
        shards, self.steps = rank_shards(split, batch_size, shuffle, rank, world_size)
        self.images, self.labels, self.skipped = decode_split(split, self.device, threads, shards)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(self.labels), self.steps, self.batch_size, self.shuffle, self.seed, epoch)
        if self.device.type == "cuda":  # pinned + async: a pageable copy would drain the GPU every epoch
            order = order.pin_memory()
        order = order.to(self.device, non_blocking=True)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


def decode_jpegs_cuda(raw: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Batched nvJPEG decode of JPEG byte tensors to uint8 N x 3 x H x W on ``device``, after draining its stream.

    nvJPEG's hardware decoder writes its outputs before work already queued on the stream has run, and the
    caching allocator may hand it blocks that queued kernels still read (pytorch/vision#9606): without the
    drain, unrelated tensors are silently overwritten (seen on an H200 as non-finite extraction maxima).
    """
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return torch.stack(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))


def decode_split(
    split: Split, device: torch.device, threads: int = 8, shards: list[Path] | None = None, nvjpeg: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The images of ``shards`` (default: all of the split's) as (uint8 N x 3 x S x S, int64 labels) on
    ``device`` in stored order, and the ``shard:key`` of each JPEG that did not decode (left out, logged).

    ``nvjpeg`` (default: on a CUDA device) decodes with batched nvJPEG; where it cannot run, one log line
    says so and the CPU decodes instead.
    """
    shards = list(split.shards) if shards is None else shards
    nvjpeg = device.type == "cuda" if nvjpeg is None else nvjpeg
    with ThreadPoolExecutor(threads) as pool:
        per_shard = list(pool.map(lambda s: [(f"{s.name}:{x.key}", x.jpeg, x.label) for x in iter_shard(s)], shards))
    samples = [s for shard in per_shard for s in shard]
    out = torch.empty((len(samples), 3, split.size, split.size), dtype=torch.uint8, device=device)
    labels, skipped, n = [], [], 0
    chunk = 1024
    with ThreadPoolExecutor(threads) as pool:  # libjpeg releases the GIL
        for i in range(0, len(samples), chunk):
            part = samples[i : i + chunk]
            raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for _, d, _ in part]
            if nvjpeg:
                try:
                    images = list(decode_jpegs_cuda(raw, device))
                except RuntimeError as error:  # one bad JPEG fails the batched call; a missing nvJPEG every call
                    images = list(pool.map(_decode_cpu, raw))
                    good = next((r for r, image in zip(raw, images) if image is not None), None)
                    if good is not None and not _nvjpeg_decodes(good, device):
                        nvjpeg = False
                        log.warning("nvJPEG cannot decode on %s (%s); decoding on the CPU instead", device, error)
            else:
                images = list(pool.map(_decode_cpu, raw))
            for (key, _, label), image in zip(part, images):
                if image is None or image.shape != (3, split.size, split.size):
                    skipped.append(key)
                    log.warning(
                        "%s: %s is not a decodable %dx%d JPEG; left out", split.root, key, split.size, split.size
                    )
                    continue
                out[n] = image
                labels.append(label)
                n += 1
    log.info("decoded %d images of %s onto %s (%.2f GB)", n, split.root, device, out[:n].numel() / 1e9)
    return out[:n], torch.tensor(labels, dtype=torch.int64, device=device), skipped


def _decode_cpu(raw: torch.Tensor) -> torch.Tensor | None:
    try:
        return decode_jpeg(raw, mode=ImageReadMode.RGB)
    except RuntimeError:
        return None


def _nvjpeg_decodes(raw: torch.Tensor, device: torch.device) -> bool:
    try:
        decode_jpegs_cuda([raw], device)
        return True
    except RuntimeError:
        return False


def decoded_bytes(split: Split, rank: int = 0, world_size: int = 1) -> int:
    """Bytes a rank's shards take decoded (uint8 3 x S x S each): what :class:`DecodedCache` would hold."""
    import pyarrow.parquet as pq

    mine = {s.name for s in split.shards[rank::world_size]}
    shard = pq.read_table(split.root / "manifest.parquet", columns=["shard"]).column(0).to_pylist()
    return sum(name in mine for name in shard) * 3 * split.size * split.size


def cache_budget(device: torch.device) -> int:
    """The default memory budget for a decoded cache: half the GPU's memory, or a quarter of the host's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def make_source(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    mode: str = "auto",
    seed: int = 0,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    budget: int | None = None,
) -> ShardStream | DecodedCache:
    """A batch source: 'cache' (decode the rank's shards once, keep them on ``device``), 'stream' (decode
    them again every epoch in ``workers`` processes) or 'auto': the cache when the rank's decoded images
    fit ``budget`` bytes (default :func:`cache_budget`), else the stream. Both give the same batches."""
    device = torch.device(device)
    if mode == "auto":
        need, budget = decoded_bytes(split, rank, world_size), budget if budget is not None else cache_budget(device)
        mode = "cache" if need <= budget else "stream"
        log.info("loader auto -> %s: %s decoded takes %.1f GB on rank %d, the cache budget on %s is %.1f GB%s",
                 mode, split.root, need / 1e9, rank, device, budget / 1e9,
                 "" if mode == "cache" else f"; streaming with {workers} decoding workers")
    if mode == "cache":
        return DecodedCache(
            split, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, device=device
        )
    if mode == "stream":
        return ShardStream(split, batch_size, shuffle=shuffle, seed=seed, workers=workers, rank=rank,
                           world_size=world_size, device=device)
    raise ValueError(f"loader mode must be 'auto', 'cache' or 'stream', not {mode!r}")


def crop_draws(n: int, size: int, crop: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Section 3.1's random draws for ``n`` images: int64 3 x n (row offset, column offset, flip 0/1) on ``device``.

    Drawn from ``generator`` (a CPU generator, so the draws are identical on every device).
    """
    draws = torch.stack([torch.randint(0, size - crop + 1, (n,), generator=generator),
                         torch.randint(0, size - crop + 1, (n,), generator=generator),
                         (torch.rand(n, generator=generator) < 0.5).long()])
    if device.type == "cuda":  # a pageable copy would block the host until the GPU drains: pin it, copy async
        draws = draws.pin_memory()
    return draws.to(device, non_blocking=True)


def crop_flip(
    images: torch.Tensor, mean: torch.Tensor, draws: torch.Tensor, crop: int, scale: float = 1.0
) -> torch.Tensor:
    """(image - mean) * scale cut at ``draws``' offsets and flipped where drawn; float N x 3 x crop x crop.

    Pure tensor code with no host sync, so it can be compiled into the training step (one fused gather).
    The result is channels_last in memory.
    """
    n = images.shape[0]
    oy, ox, flip = draws
    ar = torch.arange(crop, device=images.device)
    rows = (oy[:, None] + ar)[:, :, None]  # n x crop x 1
    cols = ox[:, None] + torch.where(flip[:, None].bool(), crop - 1 - ar, ar)  # a flip reads columns backwards
    cols = cols[:, None, :]  # n x 1 x crop
    x = images.permute(0, 2, 3, 1)[torch.arange(n, device=images.device)[:, None, None], rows, cols]
    m = mean.permute(1, 2, 0)[rows, cols]
    return ((x.float() - m) * scale).permute(0, 3, 1, 2)


def augment(images: torch.Tensor, mean: torch.Tensor, crop: int, generator: torch.Generator,
            scale: float = 1.0) -> torch.Tensor:
    """Section 3.1's training input: mean subtracted, a random crop x crop window, flipped with p=1/2.

    ``images`` uint8 N x 3 x S x S and ``mean`` 3 x S x S on one device; the mean image is cut at the
    same offsets as its image. Offsets and flips come from ``generator`` (a CPU generator, so the
    draws are identical on every device).
    """
    n, _, s, _ = images.shape
    return crop_flip(images, mean, crop_draws(n, s, crop, generator, images.device), crop, scale)


def labelled_batches(
    split: Split,
    batch_size: int,
    device: str | torch.device = "cpu",
    threads: int = 4,
    prefetch: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Every image of a split in its stored order as ``(uint8 N x 3 x S x S, labels, image_ids)`` on ``device``.

    For passes that need to know which image is which (feature extraction, visualization): image ids
    come from the manifest. Shards are read ``prefetch`` batches ahead in a background thread, where JPEGs
    also decode on a thread pool (CPU); batched nvJPEG (CUDA) decodes on the consumer's thread.
    """
    import pyarrow.parquet as pq

    device = torch.device(device)
    manifest = pq.read_table(split.root / "manifest.parquet", columns=["shard", "key", "image_id"]).to_pydict()
    ids = dict(zip(zip(manifest["shard"], manifest["key"]), manifest["image_id"]))

    def chunks() -> Iterator[list[tuple[str, bytes, int]]]:
        chunk: list[tuple[str, bytes, int]] = []
        for shard in split.shards:
            for sample in iter_shard(shard):
                chunk.append((ids[(shard.name, sample.key)], sample.jpeg, sample.label))
                if len(chunk) == batch_size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def read(chunk: list[tuple[str, bytes, int]], pool: ThreadPoolExecutor):
        raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for _, d, _ in chunk]
        if device.type != "cuda":
            raw = torch.stack(list(pool.map(lambda r: decode_jpeg(r, mode=ImageReadMode.RGB), raw)))
        return (
            raw,
            torch.tensor([label for _, _, label in chunk], dtype=torch.int64),
            [image_id for image_id, _, _ in chunk],
        )

    def ready(raw, labels: torch.Tensor, ids: list[str]):
        # nvJPEG runs here, on the consumer's thread, after its queued kernels drained (decode_jpegs_cuda).
        # From the prefetch thread it raced the consumer's kernels: non-finite maxima on an H200, gone
        # under CUDA_LAUNCH_BLOCKING=1.
        images = decode_jpegs_cuda(raw, device) if device.type == "cuda" else raw
        return images, labels.to(device), ids

    with ThreadPoolExecutor(threads) as pool, ThreadPoolExecutor(1) as ahead:
        queue: list = []
        for chunk in chunks():
            queue.append(ahead.submit(read, chunk, pool))
            if len(queue) > prefetch:
                yield ready(*queue.pop(0).result())
        for future in queue:
            yield ready(*future.result())


def network_inputs(
    split: Split,
    mean: torch.Tensor,
    crop: int,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    scale: float = 1.0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """The network's test input for every image of a split, in order: the mean-subtracted center crop
    (section 3.1), as ``(float N x 3 x crop x crop, labels, image_ids)``. ``mean`` is 3 x S x S on ``device``."""
    from zf_pipeline.evaluate import eval_crops

    for images, labels, ids in labelled_batches(split, batch_size, device):
        yield eval_crops(images, mean, crop, "center", scale)[0], labels, ids


def endless(source: ShardStream | DecodedCache) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``source``, epoch 1, 2, ... without end: for timing a fixed number of steps."""
    epoch = 0
    while True:
        epoch += 1
        yield from source.epoch(epoch)
