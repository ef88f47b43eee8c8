"""The host side of a pass: Parquet writer threads, and the ring of host buffers that batches cross from
the device to them, so that encoding never stalls the loop that feeds the device."""

from __future__ import annotations

import functools
import itertools
import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from zf_pipeline.features.schema import (
    ACTIVATION_ROW_GROUP_ROWS,
    ACTIVATION_SCHEMA,
    ACTIVATION_WRITE_OPTIONS,
    FEATURE_ROW_GROUP_BYTES,
    FEATURE_WRITE_OPTIONS,
    ExtractionSummary,
    activation_table,
    feature_rows,
    feature_schema,
)

ROW_GROUPS_PER_FILE = 64
# One encoder thread does ~14M activation rows/s or ~70M vector values/s (zstd 1): at 50k img/s conv5's
# 9,216-value vectors alone need ~7 threads. Threads hold the GIL only for microseconds a batch.
MAX_THREADS_PER_PARTITION = 8
# Host buffers (pinned on CUDA) that batches cross between the device and the writers: the loop waits
# only to reuse one, i.e. when the device or the writers are RING_SLOTS batches behind it.
RING_SLOTS = 4


@dataclass(frozen=True)
class WriterOptions:
    """How a pass lays out its Parquet files, and the cores its encoder threads share."""

    row_group_rows: int = ACTIVATION_ROW_GROUP_ROWS  # activations rows per row group
    row_groups_per_file: int = ROW_GROUPS_PER_FILE
    cores: int | None = None  # None: os.cpu_count()


class PartitionWriter:
    """Appends [n, ...] batches to ``<root>/layer=<layer>/part-NNNNN.parquet`` in whole row groups.

    ``make_table(ids, labels, *chunk_lists)`` turns buffered batches into an Arrow table: one list of
    [n_i, ...] chunks per array argument of :meth:`append`. Batches are buffered (not copied) until a
    row group is full, so row groups stay large however small the batches are.
    """

    def __init__(
        self, root: Path, layer: str, rows_per_image: int, row_group_rows: int, make_table, schema, options: dict,
        first_file: int = 0, file_step: int = 1, groups_per_file: int = ROW_GROUPS_PER_FILE,
    ):
        self.dir = root / f"layer={layer}"
        # Several writers of one partition number their files first_file, first_file + file_step, ...
        self.first_file, self.file_step, self.groups_per_file = first_file, file_step, groups_per_file
        self.dir.mkdir(parents=True, exist_ok=True)
        self.images_per_group = max(1, row_group_rows // rows_per_image)
        self.make_table, self.schema, self.options = make_table, schema, options
        self.pending: list[tuple[list[str], np.ndarray, tuple[np.ndarray, ...]]] = []
        self.pending_images = 0
        self.writer: pq.ParquetWriter | None = None
        self.files = 0
        self.groups_in_file = 0
        self.rows = 0

    def append(self, ids: list[str], labels: np.ndarray, *arrays: np.ndarray) -> None:
        self.pending.append((ids, labels, arrays))
        self.pending_images += len(ids)
        while self.pending_images >= self.images_per_group:
            self._flush(self.images_per_group)

    def close(self) -> None:
        if self.pending_images:
            self._flush(self.pending_images)
        if self.writer is not None:
            self.writer.close()

    def _flush(self, n: int) -> None:
        """Write the first ``n`` buffered images as one row group; the batch that straddles it is split (views)."""
        group, count = [], 0
        while count < n:
            ids, labels, arrays = self.pending.pop(0)
            k = min(len(ids), n - count)
            group.append((ids[:k], labels[:k], [a[:k] for a in arrays]))
            if k < len(ids):
                self.pending.insert(0, (ids[k:], labels[k:], tuple(a[k:] for a in arrays)))
            count += k
        self.pending_images -= n
        ids = list(itertools.chain.from_iterable(batch[0] for batch in group))  # no Python loop per id under the GIL
        labels = np.concatenate([batch[1] for batch in group])
        table = self.make_table(ids, labels, *([batch[2][j] for batch in group] for j in range(len(group[0][2]))))
        if self.writer is None or self.groups_in_file >= self.groups_per_file:
            if self.writer is not None:
                self.writer.close()
            path = self.dir / f"part-{self.first_file + self.files * self.file_step:05d}.parquet"
            self.writer = pq.ParquetWriter(path, self.schema, **self.options)
            self.files += 1
            self.groups_in_file = 0
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.groups_in_file += 1
        self.rows += table.num_rows


class _WriterThread(threading.Thread):
    """Runs one PartitionWriter off a bounded queue, so Parquet encoding never stalls the GPU loop."""

    def __init__(self, writer: PartitionWriter, maxsize: int = 8):
        super().__init__(daemon=True)
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.append(*item)
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    self.error = e
        if self.error is None:
            try:
                self.writer.close()
            except BaseException as e:  # noqa: BLE001
                self.error = e

    def put(self, item) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing {self.writer.dir} failed") from self.error
        self.queue.put(item)


def _start(n: int, make_writer: Callable[..., PartitionWriter]) -> list[_WriterThread]:
    """``n`` running writer threads of one partition; thread i writes files i, i + n, i + 2n, ..."""
    threads = [_WriterThread(make_writer(first_file=i, file_step=n)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def _column_slices(channels: Sequence[int]) -> list[slice]:
    """The columns of each layer in the concatenated [N, maps] outputs."""
    ends = np.cumsum(channels).tolist()
    return [slice(end - c, end) for c, end in zip(channels, ends)]


class Writers:
    """The writer threads of one pass: for every activations and features partition, one or more threads,
    each with its own files, taking whole row groups in turn (so row order inside a file stays image order).

    Whole row groups, not whole batches: a thread starts encoding as soon as the images of one row group
    have come, and the pass ends with one partial row group per partition left to encode, not one per thread.
    """

    def __init__(self, root: Path, summary: ExtractionSummary, options: WriterOptions = WriterOptions()):
        acts = [summary.layers[name] for name in summary.activation_layers]
        feats = [summary.layers[name] for name in summary.feature_layers]
        # The cores are shared by the encoding work per image: an activations row costs about 5x a vector value.
        # Rounded up: a partition one thread short stalls the whole pass, a spare thread only waits.
        costs = [5 * info.channels for info in acts] + [info.vector_length for info in feats]
        cores = options.cores or os.cpu_count() or 1
        counts = iter([max(1, min(MAX_THREADS_PER_PARTITION, math.ceil(cores * c / sum(costs)))) for c in costs])
        per_file = options.row_groups_per_file
        self.activations = [
            _start(next(counts), functools.partial(
                PartitionWriter, root / "activations", name, info.channels, options.row_group_rows, activation_table,
                ACTIVATION_SCHEMA, ACTIVATION_WRITE_OPTIONS, groups_per_file=per_file))
            for name, info in zip(summary.activation_layers, acts)
        ]
        self.features: list[list[_WriterThread]] = []
        for name, info in zip(summary.feature_layers, feats):
            schema = feature_schema(info.vector_length)
            rows = max(1, FEATURE_ROW_GROUP_BYTES // (2 * info.vector_length))
            make = feature_rows(summary.split, schema)
            self.features.append(_start(next(counts), functools.partial(
                PartitionWriter, root / "features", name, 1, rows, make, schema, FEATURE_WRITE_OPTIONS,
                groups_per_file=per_file)))
        self.partitions = self.activations + self.features
        self.threads = [t for threads in self.partitions for t in threads]
        # Per partition: the thread whose row group is filling, and the images it has of it.
        self.turn = [0] * len(self.partitions)
        self.filled = [0] * len(self.partitions)
        # Where each activations layer's maps sit in a batch's [3, N, maps] block.
        self.columns = _column_slices([info.channels for info in acts])
        self.maps = sum(info.channels for info in acts)
        self.lengths = [info.vector_length for info in feats]

    @staticmethod
    def pack(labels: torch.Tensor, block: torch.Tensor, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """One batch's outputs as one flat int16 tensor, for a single device-to-host copy: labels [N] (int64),
        then the [3, N, maps] int16 block of all activations layers (float16 value bits, y, x), then the
        [N, length] float16 vectors."""
        return torch.cat([labels.long().reshape(-1).view(torch.int16), block.reshape(-1),
                          *(v.reshape(-1).view(torch.int16) for v in vectors)])

    def part_sizes(self, n: int) -> list[int]:
        """The int16 elements of :meth:`pack`'s parts for ``n`` images: labels, the block, each layer's vectors."""
        return [4 * n, 3 * n * self.maps] + [n * length for length in self.lengths]

    def unpack(self, flat: np.ndarray, n: int) -> list[np.ndarray]:
        """Views of :meth:`pack`'s parts of an ``n``-image batch in the host copy ``flat``: labels, one
        [3, n, C] block per activations layer (a column slice of the packed block), the vectors.
        numpy views: a torch call per part would drop and re-take the GIL each time."""
        sizes = self.part_sizes(n)
        labels, block, *vectors = np.split(flat[: sum(sizes)], np.cumsum(sizes)[:-1])
        block = block.reshape(3, n, self.maps)
        blocks = [block[:, :, c] for c in self.columns]
        vectors = [v.view(np.float16).reshape(n, length) for v, length in zip(vectors, self.lengths)]
        return [labels.view(np.int64), *blocks, *vectors]

    def dispatch(self, image_ids: list[str], host: Sequence[np.ndarray]) -> None:
        """Hand one batch's outputs, on the host in :meth:`unpack`'s layout, to the writer threads; a batch
        that completes a row group is split (views), its rest going to the partition's next thread."""
        labels, *arrays = host
        columns = [(value.view(np.float16), y, x) for value, y, x in arrays[: len(self.activations)]]
        columns += [(vector,) for vector in arrays[len(self.activations) :]]
        for p, (threads, partition) in enumerate(zip(self.partitions, columns)):
            per_group = threads[0].writer.images_per_group
            start = 0
            while start < len(image_ids):
                end = min(len(image_ids), start + per_group - self.filled[p])
                threads[self.turn[p]].put((image_ids[start:end], labels[start:end], *(c[start:end] for c in partition)))
                self.filled[p] += end - start
                if self.filled[p] == per_group:
                    self.filled[p], self.turn[p] = 0, (self.turn[p] + 1) % len(threads)
                start = end

    def close(self) -> None:
        """Drain the queues, close the files; raise the first writer error."""
        for t in self.threads:
            t.queue.put(None)
        for t in self.threads:
            t.join()
        errors = [t.error for t in self.threads if t.error is not None]
        if errors:
            raise RuntimeError(f"writing the extraction failed: {errors[0]}") from errors[0]

    @property
    def activation_rows(self) -> int:
        return sum(t.writer.rows for threads in self.activations for t in threads)


class _Slot:
    """One batch's host buffers, pinned on CUDA so that neither copy waits: ``up`` stages the batch's labels
    for the device, ``down`` receives its packed outputs; ``event`` marks both copies done."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"
        self.up = torch.empty(0, dtype=torch.int64)
        self.down = torch.empty(0, dtype=torch.int16)
        self.used = 0  # elements of ``down`` the last download filled
        # blocking: the copier thread sleeps in synchronize() instead of spinning on a core the writers need.
        self.event = torch.cuda.Event(blocking=True) if self.pinned else None

    def _room(self, buffer: torch.Tensor, numel: int) -> torch.Tensor:
        """``buffer``, or a larger one (a longer batch: allocated once, then reused)."""
        return buffer if buffer.numel() >= numel else torch.empty(numel, dtype=buffer.dtype, pin_memory=self.pinned)

    def upload(self, rows: np.ndarray) -> torch.Tensor:
        """int64 ``rows`` on the device, copied from ``up`` (from pageable memory the copy may sync the stream)."""
        self.up = self._room(self.up, rows.size)
        staged = self.up[: rows.size].view(rows.shape).copy_(torch.from_numpy(rows))
        return staged.to(self.device, non_blocking=True)

    def download(self, flat: torch.Tensor) -> None:
        """Queue the copy of the device's packed outputs into ``down``, then the event the copier waits on."""
        self.down = self._room(self.down, flat.numel())
        self.used = flat.numel()
        self.down[: self.used].copy_(flat, non_blocking=True)
        if self.event is not None:
            self.event.record(torch.cuda.current_stream(self.device))


class HostRing(threading.Thread):
    """RING_SLOTS slots between the extraction loop and the writers, and the thread that empties them.

    The loop takes a free slot (it waits only while none is free), queues its batch's copies into it
    and sends it here, in batch order. This thread waits for the slot's event, copies the batch out
    into a pageable array (the writers buffer parts for whole row groups, far longer than a slot can
    wait), frees the slot and hands views of the copy to the writer threads. So the loop never waits
    for the device, and a writer behind by a row group holds no slot.

    One numpy copy and views, not a torch copy per part: each torch call drops the GIL and must win it
    back against a dozen writer threads (docs/results/extraction.md). A copy stays alive until the last
    partition has written its part: at most one activations row group of batches.
    """

    def __init__(self, writers: Writers, device: torch.device, slots: int = RING_SLOTS):
        super().__init__(daemon=True)
        self.writers = writers
        self.free: queue.Queue[_Slot] = queue.Queue()
        for _ in range(slots):
            self.free.put(_Slot(device))
        self.queue: queue.Queue = queue.Queue()  # never more than `slots` batches: each holds a slot
        self.error: BaseException | None = None
        self.start()

    def acquire(self) -> _Slot:
        slot = self.free.get()
        if self.error is not None:
            raise RuntimeError("handing the batches to the writers failed") from self.error
        return slot

    def send(self, slot: _Slot, image_ids: list[str]) -> None:
        self.queue.put((slot, image_ids))

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            slot, image_ids = item
            host = None
            try:
                if slot.event is not None:
                    slot.event.synchronize()  # without the GIL
                if self.error is None:
                    # numpy copies without the GIL (one hand-off back), then views
                    host = self.writers.unpack(slot.down[: slot.used].numpy().copy(), len(image_ids))
            except BaseException as e:  # noqa: BLE001 - re-raised in the loop's thread
                self.error = e
            finally:
                self.free.put(slot)  # freed even after an error: the loop must not wait for it forever
            if host is not None:
                try:
                    self.writers.dispatch(image_ids, host)
                except BaseException as e:  # noqa: BLE001
                    self.error = e

    def close(self) -> None:
        """Empty the slots, close the writers; raise the first error."""
        self.queue.put(None)
        self.join()
        self.writers.close()
        if self.error is not None:
            raise RuntimeError("handing the batches to the writers failed") from self.error
