"""Shards -> batches of uint8 images on the training device (the shard format of ``zf_pipeline.data.shards``).

Four sources with one interface (``len(src)`` batches a epoch, ``src.epoch(e)`` yields
``(images uint8 N x 3 x S x S on device, labels int64 on device)``):

- ``decode="cpu"``: DataLoader workers read tars and decode JPEGs (libjpeg through torchvision).
- ``decode="gpu"``: workers only read JPEG bytes (cheap); the main process decodes each batch with
  batched nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``).
- ``decode="hybrid"``: workers decode a fraction of each batch, nvJPEG the rest.
- :class:`DecodedCache`: the whole split decoded once and held on the device (Imagenette train is
  9,469 x 196 KB = 1.9 GB), for datasets that fit: no decode at all after the first pass.

Order is deterministic given (seed, epoch): shard order and a sample shuffle buffer are seeded by
both, and each DDP rank reads its own shards (``shards[rank::world_size]``). Crops, flips and mean
subtraction happen on the device, in :func:`augment` (training) and ``zf_pipeline.evaluate`` (test).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from zf_pipeline.data.shards import IncompleteShards, ShardFormatError, iter_shard, load_summary

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


class _Samples(IterableDataset):
    """Samples of a rank's shards: shard order and a shuffle buffer seeded by (seed, epoch).

    The epoch lives in shared memory so that persistent workers see the one the main process set.
    ``cpu_fraction`` of the samples are decoded here (in the worker); the rest travel as JPEG bytes.
    """

    def __init__(self, shards: list[Path], shuffle: bool, seed: int, cpu_fraction: float, buffer: int = 2048):
        self.shards, self.shuffle, self.seed = shards, shuffle, seed
        self.cpu_fraction, self.buffer = cpu_fraction, buffer
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        epoch = int(self.epoch)
        shards = list(self.shards)
        rng = random.Random(epoch_seed(self.seed, epoch, wid))
        if self.shuffle:
            random.Random(epoch_seed(self.seed, epoch)).shuffle(shards)
        buf: list = []
        n = 0
        for shard in shards[wid::nw]:
            for sample in iter_shard(shard):
                # Decode on the CPU for the samples where (n+1)*f crosses an integer: exactly a fraction f.
                decode = int((n + 1) * self.cpu_fraction) > int(n * self.cpu_fraction)
                n += 1
                item = (self._image(sample.jpeg, decode), sample.label)
                if not self.shuffle:
                    yield item
                    continue
                buf.append(item)
                if len(buf) >= self.buffer:
                    i = rng.randrange(len(buf))
                    buf[i], buf[-1] = buf[-1], buf[i]
                    yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    @staticmethod
    def _image(data: bytes, decode: bool) -> torch.Tensor:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_jpeg(raw, mode=ImageReadMode.RGB) if decode else raw


def _collate(items: list) -> dict[str, torch.Tensor]:
    """One batch as a few tensors: decoded images stacked, JPEG bytes packed into one buffer.

    Few large tensors instead of one per image: each tensor crossing the worker queue costs a
    shared-memory segment and each pinned copy an allocation.
    """
    images, labels = zip(*items)
    dec = [i for i, im in enumerate(images) if im.dim() == 3]
    raw = [i for i, im in enumerate(images) if im.dim() == 1]
    batch = {"labels": torch.tensor(labels, dtype=torch.int64), "decoded_idx": torch.tensor(dec, dtype=torch.int64),
             "raw_idx": torch.tensor(raw, dtype=torch.int64),
             "raw_len": torch.tensor([len(images[i]) for i in raw], dtype=torch.int64)}
    batch["decoded"] = torch.stack([images[i] for i in dec]) if dec else torch.empty(0, dtype=torch.uint8)
    batch["raw"] = torch.cat([images[i] for i in raw]) if raw else torch.empty(0, dtype=torch.uint8)
    return batch


class ShardStream:
    """Batches streamed from a split's tar shards, decoded by CPU workers, by nvJPEG on the GPU, or both.

    ``decode``: 'cpu' (workers decode), 'gpu' (workers read bytes, the main process decodes each batch
    with batched nvJPEG) or 'hybrid' (workers decode ``cpu_fraction`` of each batch, nvJPEG the rest:
    the two decoders together outrun either alone).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        decode: str = "cpu",
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        drop_last: bool | None = None,
        cpu_fraction: float = 0.5,
    ):
        fractions = {"cpu": 1.0, "gpu": 0.0, "hybrid": cpu_fraction}
        if decode not in fractions:
            raise ValueError(f"decode must be one of {sorted(fractions)}, not {decode!r}")
        if len(split.shards) < world_size:
            raise ShardFormatError(f"{split.root}: {len(split.shards)} shards cannot feed {world_size} ranks")
        self.split, self.batch_size, self.world_size = split, batch_size, world_size
        self.device = torch.device(device)
        self.drop_last = shuffle if drop_last is None else drop_last
        self.samples = _Samples(list(split.shards[rank::world_size]), shuffle, seed, fractions[decode])
        self.shards = self.samples.shards
        self.loader = DataLoader(
            self.samples,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            drop_last=self.drop_last,
            persistent_workers=num_workers > 0,  # no worker start-up at every epoch
            prefetch_factor=4 if num_workers else None,
        )

    def __len__(self) -> int:
        # Training: every rank takes the same number of steps (DDP needs it), from the split's total.
        if self.drop_last:
            return self.split.num_images // (self.batch_size * self.world_size)
        return -(-self.split.num_images // (self.batch_size * self.world_size))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch; a training rank whose shards run short starts them over."""
        steps, done, rounds = len(self), 0, 0
        while True:
            self.samples.epoch.fill_(epoch * 1000 + rounds)
            before = done
            for batch in self.loader:
                yield self._to_device(batch), batch["labels"].to(self.device, non_blocking=True)
                done += 1
                if self.drop_last and done == steps:
                    return
            if not self.drop_last:
                return
            if done == before:
                raise ShardFormatError(f"{self.split.root}: this rank's shards hold fewer than {self.batch_size} images")
            rounds += 1

    def _to_device(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 N x 3 x S x S on the device: worker-decoded images copied, the rest decoded by nvJPEG here."""
        if not len(batch["raw_idx"]):
            return batch["decoded"].to(self.device, non_blocking=True)
        s = self.split.size
        out = torch.empty((len(batch["labels"]), 3, s, s), dtype=torch.uint8, device=self.device)
        jpegs = list(torch.split(batch["raw"], batch["raw_len"].tolist()))
        out[batch["raw_idx"].to(self.device)] = decode_jpegs_cuda(jpegs, self.device)
        if len(batch["decoded_idx"]):
            out[batch["decoded_idx"].to(self.device)] = batch["decoded"].to(self.device, non_blocking=True)
        return out


class DecodedCache:
    """A whole split decoded once into one uint8 tensor on ``device``; batches are index gathers."""

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
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.images, self.labels = decode_split(split, self.device, threads)

    def __len__(self) -> int:
        n = len(self.labels) // self.world_size
        return n // self.batch_size if self.shuffle else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        order = order[self.rank :: self.world_size][: n // self.world_size]
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
    if device.type == "cuda":  # (the tests run the 'gpu' stream on the CPU)
        torch.cuda.current_stream(device).synchronize()
    return torch.stack(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))


def decode_split(split: Split, device: torch.device, threads: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as (uint8 N x 3 x S x S, int64 labels) on ``device``, in the split's order."""
    with ThreadPoolExecutor(threads) as pool:
        per_shard = list(pool.map(lambda s: [(x.key, x.jpeg, x.label) for x in iter_shard(s)], split.shards))
    samples = [s for shard in per_shard for s in shard]
    out = torch.empty((len(samples), 3, split.size, split.size), dtype=torch.uint8, device=device)
    chunk = 1024
    for i in range(0, len(samples), chunk):
        raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for _, d, _ in samples[i : i + chunk]]
        if device.type == "cuda":
            out[i : i + len(raw)] = decode_jpegs_cuda(raw, device)
        else:
            with ThreadPoolExecutor(threads) as pool:  # libjpeg releases the GIL
                out[i : i + len(raw)] = torch.stack(list(pool.map(lambda r: decode_jpeg(r, mode=ImageReadMode.RGB), raw)))
    labels = torch.tensor([label for _, _, label in samples], dtype=torch.int64, device=device)
    log.info("decoded %d images of %s onto %s (%.2f GB)", len(samples), split.root, device, out.numel() / 1e9)
    return out, labels


def make_source(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    mode: str,
    seed: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    cpu_fraction: float = 0.5,
) -> ShardStream | DecodedCache:
    """A batch source by mode: 'cpu' / 'gpu' / 'hybrid' (stream, decode there) or 'cache' (decode once, keep)."""
    if mode == "cache":
        return DecodedCache(split, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, device=device)
    return ShardStream(split, batch_size, shuffle=shuffle, seed=seed, decode=mode, num_workers=num_workers,
                       rank=rank, world_size=world_size, device=device, cpu_fraction=cpu_fraction)


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


def crop_flip(images: torch.Tensor, mean: torch.Tensor, draws: torch.Tensor, crop: int, scale: float = 1.0) -> torch.Tensor:
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
        return raw, torch.tensor([label for _, _, label in chunk], dtype=torch.int64), [image_id for image_id, _, _ in chunk]

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
    split: Split, mean: torch.Tensor, crop: int, batch_size: int = 128, device: str | torch.device = "cpu", scale: float = 1.0
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
