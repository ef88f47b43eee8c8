"""Training batches decoded from the shards every epoch, for splits whose decoded images do not fit memory.

ImageNet's train split is 1.28M JPEGs of ~22 kB in its 256 px shards (28 GB, kept by the page cache)
but 252 GB decoded: it fits neither one GPU nor its host, so :class:`~zf_pipeline.data.loader.DecodedCache`
cannot hold it. :class:`ShardStream` reads each sample's JPEG in place from its tar (an index of byte
offsets built once) and decodes it again every epoch in worker processes (libjpeg-turbo through
torchvision, one core each, no GIL), straight into a ring of shared-memory batch slots that are
registered as pinned memory: the main process only copies a finished slot to the GPU on a side stream.

A batch holds exactly the samples that the cache's batch holds for the same (seed, epoch, rank): both
take their order from :func:`~zf_pipeline.data.loader.epoch_order` over the rank's own shards. A JPEG
that fails to decode is left out of its batch (which is then smaller), logged once, and listed in
``ShardStream.skipped``; it never stops training.
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torchvision.io import ImageReadMode, decode_jpeg

from zf_pipeline.data.records import tar_members
from zf_pipeline.data.shard_format import ShardFormatError
from zf_pipeline.workers import default_sigterm

log = logging.getLogger(__name__)

# Jobs queued per worker: enough to hide one slow image, few enough that the ring stays small.
JOBS_PER_WORKER = 3


def _jpegs(shard: Path) -> list[tuple[str, int, int]]:
    """(key, offset, size) of each sample's JPEG in a shard, from its tar headers."""
    return [
        (name.partition(".")[0], m.offset, m.size) for name, m in tar_members(shard).items() if name.endswith(".jpg")
    ]


class SampleIndex:
    """Where each sample of some shards lies: shard number, byte offset and size of its JPEG, its label, key.

    Built from the tar headers (no image bytes read; ImageNet's 257 shards are scanned by parallel
    processes) and the manifest's labels, in the shards' stored order.
    """

    def __init__(self, root: Path, shards: list[Path]):
        import pyarrow.parquet as pq

        manifest = pq.read_table(root / "manifest.parquet", columns=["shard", "key", "label"]).to_pydict()
        labels = dict(zip(zip(manifest["shard"], manifest["key"]), manifest["label"]))
        if len(shards) >= 32:
            with ProcessPoolExecutor(min(len(shards), os.cpu_count() or 1), mp.get_context("forkserver")) as pool:
                per_shard = list(pool.map(_jpegs, shards))
        else:
            per_shard = [_jpegs(shard) for shard in shards]
        where, self.labels, self.keys = [], [], []
        for number, (shard, samples) in enumerate(zip(shards, per_shard)):
            for key, offset, size in samples:
                if (shard.name, key) not in labels:
                    raise ShardFormatError(f"{shard}: sample {key} is not in {root / 'manifest.parquet'}")
                where.append((number, offset, size))
                self.labels.append(labels[(shard.name, key)])
                self.keys.append(f"{shard.name}:{key}")
        self.shards = shards
        self.where = np.asarray(where, dtype=np.int64).reshape(-1, 3)
        self.labels = torch.tensor(self.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.where)


class _Reader:
    """Decodes samples given as (shard, offset, size) rows into a uint8 N x 3 x S x S buffer."""

    def __init__(self, shards: list[Path], size: int):
        self.shards, self.size = shards, size
        self.maps: dict[int, mmap.mmap] = {}

    def jpeg(self, shard: int, offset: int, nbytes: int) -> torch.Tensor:
        if shard not in self.maps:
            with open(self.shards[shard], "rb") as f:
                self.maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return torch.frombuffer(bytearray(self.maps[shard][offset : offset + nbytes]), dtype=torch.uint8)

    def decode_into(self, out: torch.Tensor, where: np.ndarray) -> list[int]:
        """Decode ``where``'s samples into ``out[0], out[1], ...`` (skipping bad ones); returns the bad rows."""
        bad, n = [], 0
        for row, (shard, offset, nbytes) in enumerate(where.tolist()):
            try:
                image = decode_jpeg(self.jpeg(shard, offset, nbytes), mode=ImageReadMode.RGB)
            except RuntimeError:
                bad.append(row)
                continue
            if image.shape != (3, self.size, self.size):
                bad.append(row)
                continue
            out[n] = image
            n += 1
        return bad


def _work(shards: list[Path], size: int, slots: torch.Tensor, jobs, done) -> None:
    """Worker process: decode each job's samples into its slot, report (slot, batch, bad rows)."""
    default_sigterm()  # so the exit-time terminate() of a stuck daemon worker ends it
    torch.set_num_threads(1)
    reader = _Reader(shards, size)
    while (job := jobs.get()) is not None:
        slot, batch, where = job
        try:
            done.put((slot, batch, reader.decode_into(slots[slot], where), None))
        except Exception:  # an unreadable shard: the main process raises it with the worker's traceback
            done.put((slot, batch, [], traceback.format_exc()))


class ShardStream:
    """Batches ``(uint8 N x 3 x S x S, int64 labels)`` on ``device``, decoded anew each epoch by ``workers``
    processes (0: in this process). Same interface and same batches as ``DecodedCache``."""

    def __init__(
        self,
        split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ):
        from zf_pipeline.data.loader import rank_shards

        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.shards, self.steps = rank_shards(split, batch_size, shuffle, rank, world_size)
        self.index = SampleIndex(split.root, self.shards)
        self.skipped: list[str] = []
        self.workers = workers
        self._procs: list = []
        self._reader = _Reader(self.shards, split.size)
        if workers:
            self._start(workers)

    def _start(self, workers: int) -> None:
        s = self.split.size
        self.slots = torch.empty((workers * JOBS_PER_WORKER, self.batch_size, 3, s, s), dtype=torch.uint8)
        self.slots.share_memory_()
        self._pinned = False
        if self.device.type == "cuda":
            # Registered in place, the shared slots copy to the GPU by DMA; no pinned staging copy.
            err = torch.cuda.cudart().cudaHostRegister(self.slots.data_ptr(), self.slots.nbytes, 0)
            self._pinned = int(err) == 0
            if not self._pinned:
                log.warning("could not pin the stream's %.1f GB of batch slots (cudaError %s): copies will be slower",
                            self.slots.nbytes / 1e9, err)
            self.copy_stream = torch.cuda.Stream(self.device)
        ctx = mp.get_context("forkserver")  # safe beside CUDA and beside Dagster's threads
        self.jobs, self.done = ctx.Queue(), ctx.Queue()
        self._procs = [ctx.Process(target=_work, args=(self.shards, s, self.slots, self.jobs, self.done), daemon=True)
                       for _ in range(workers)]
        for p in self._procs:
            p.start()
        log.info("stream: %d decoding workers, %d slots of %d images (%.1f GB shared%s) for %d images in %d shards",
                 workers, len(self.slots), self.batch_size, self.slots.nbytes / 1e9,
                 ", pinned" if self._pinned else "", len(self.index), len(self.shards))

    def __len__(self) -> int:
        return self.steps

    def close(self) -> None:
        """Stop the worker processes (also done at exit: they are daemons)."""
        for _ in self._procs:
            self.jobs.put(None)
        for p in self._procs:
            p.join(timeout=10)
        if getattr(self, "_pinned", False):
            torch.cuda.cudart().cudaHostUnregister(self.slots.data_ptr())
            self._pinned = False
        self._procs = []

    def __del__(self) -> None:
        if getattr(self, "_procs", None):  # absent when __init__ failed before starting workers
            self.close()

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from zf_pipeline.data.loader import epoch_order

        order = epoch_order(len(self.index), self.steps, self.batch_size, self.shuffle, self.seed, epoch)
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size].numpy() for i in range(self.steps)]
        if not self._procs:
            for rows in batches:
                out = torch.empty((len(rows), 3, self.split.size, self.split.size), dtype=torch.uint8)
                bad = self._reader.decode_into(out, self.index.where[rows])
                yield self._deliver(out, rows, bad)
            return
        yield from self._parallel(batches)

    def _parallel(self, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        free = list(range(len(self.slots)))
        ready: dict[int, tuple[int, list[int]]] = {}
        inflight, submitted, copied = 0, 0, None  # copied: (slot, event) of the last batch sent to the GPU

        def submit() -> None:
            nonlocal submitted, inflight
            while free and submitted < len(batches):
                self.jobs.put((free.pop(), submitted, self.index.where[batches[submitted]]))
                submitted += 1
                inflight += 1

        try:
            submit()
            for i, rows in enumerate(batches):
                while i not in ready:
                    slot, batch, bad, error = self._get()
                    inflight -= 1
                    if error:
                        raise ShardFormatError(f"{self.split.root}: a stream worker failed:\n{error}")
                    ready[batch] = (slot, bad)
                slot, bad = ready.pop(i)
                n = len(rows) - len(bad)
                if self.device.type == "cuda":
                    with torch.cuda.stream(self.copy_stream):
                        images = self.slots[slot, :n].to(self.device, non_blocking=self._pinned)
                        event = torch.cuda.Event()
                        event.record()
                    torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
                    images.record_stream(torch.cuda.current_stream(self.device))
                    if copied:  # the previous slot's copy, queued a step ago, is done by now: hand the slot back
                        copied[1].synchronize()
                        free.append(copied[0])
                    copied = (slot, event)
                else:
                    images = self.slots[slot, :n].clone()
                    free.append(slot)
                submit()
                yield self._deliver(images, rows, bad)
        finally:  # an abandoned epoch: let the workers finish what they hold before the slots are reused
            while inflight:
                self._get()
                inflight -= 1
            if copied:
                copied[1].synchronize()

    def _get(self) -> tuple:
        while True:
            try:
                return self.done.get(timeout=5)
            except queue.Empty:
                dead = [p.exitcode for p in self._procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"{self.split.root}: stream worker(s) died (exit codes {dead})") from None

    def _deliver(self, images: torch.Tensor, rows: np.ndarray, bad: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = self.index.labels[rows]
        if bad:
            keep = np.ones(len(rows), dtype=bool)
            keep[bad] = False
            labels = labels[torch.from_numpy(keep)]
            for row in bad:
                key = self.index.keys[rows[row]]
                if key not in self.skipped:
                    self.skipped.append(key)
                    log.warning("%s: %s is not a decodable %dx%d JPEG; left out of its batch (%d skipped so far)",
                                self.split.root, key, self.split.size, self.split.size, len(self.skipped))
        return images[: len(labels)].to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def measure(src: ShardStream, batches: int) -> float:
    """Images per second the stream delivers alone (no training step), once every worker is busy."""
    it = src.epoch(0)
    for _ in range(2 * JOBS_PER_WORKER * max(1, src.workers)):  # worker start-up is not throughput
        next(it)
    t, n = time.perf_counter(), 0
    for _, (images, _) in zip(range(batches), it):
        n += len(images)
    if src.device.type == "cuda":
        torch.cuda.synchronize(src.device)
    return n / (time.perf_counter() - t)
