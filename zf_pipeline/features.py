"""Layer-wise features: one pass of a trained net over a split, written to Parquet.

Two tables, both partitioned by layer in hive style (``<table>/layer=conv5/part-00000.parquet``):

- ``activations``: one row per (image, layer, channel): the feature map's maximum ``value`` and
  where it is (``y``, ``x``). Section 4 mines "the top 9 activations" of each map from these rows.
- ``features``: one row per (image, layer) with a fixed-size ``vector`` for the transfer probes
  (Section 5, Table 7): fc6 / fc7 whole; conv5 as the pool5 output (6x6 maps, 9216 values for
  Krizhevsky's widths, the input of fc6 in Fig. 2); conv1-4 max-pooled to the same 6x6 grid, so
  every conv layer is described at layer 5's spatial resolution and a probe sees where a feature
  fired, not only whether it fired, at a size (3,456 to 13,824 values) a linear SVM handles.

The pass also keeps a streaming top-k per map on the device (``torch.topk`` per batch merged with
the running top-k), ordered like the SQL of :mod:`zf_pipeline.mining`: value descending, then
image_id ascending (byte order, as DuckDB compares VARCHAR). It is saved as ``stream_top{k}.parquet``.

Everything is written inside a temporary folder renamed onto ``out_dir`` at the end; the summary
``_SUCCESS.json`` is the last file written, so a folder without it is never a finished pass.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from zf_pipeline.data.loader import Split, load_mean, network_inputs, open_split
from zf_pipeline.io import atomic_path
from zf_pipeline.models.zfnet import FEATURE_LAYERS, ZFNet

log = logging.getLogger(__name__)

SUMMARY_FILE = "_SUCCESS.json"
CONV_FEATURE_GRID = 6  # conv1-4 are max-pooled to the 6x6 grid of pool5 (see the module docstring)

# On-disk schema of one activations partition (``layer`` lives in the folder name).
ACTIVATION_SCHEMA = pa.schema(
    [
        ("image_id", pa.dictionary(pa.int32(), pa.string())),
        ("label", pa.int32()),
        ("channel", pa.int16()),
        ("value", pa.float16()),  # the maxima are ranked, not summed: 11 significant bits are plenty
        ("y", pa.int16()),
        ("x", pa.int16()),
    ]
)
# Rows stream in image order, channel-major inside an image: image_id and label become long runs
# (RLE ~0 bits), channel a repeating 0..C-1 pattern that zstd folds; value, y and x carry the
# information. BYTE_STREAM_SPLIT is not used: DuckDB cannot read it on float16 columns.
ACTIVATION_WRITE_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=["image_id", "label", "channel", "y", "x"],
    write_statistics=["label", "channel", "value"],
)
# The vectors dominate the bytes: no min/max statistics on them (nothing prunes on a vector value, and
# they cost a third of the encoding time) and zstd level 1 (as small as level 3 on float16, 1.4x faster).
FEATURE_WRITE_OPTIONS = dict(
    compression="zstd",
    compression_level=1,
    use_dictionary=["image_id", "label", "split"],
    write_statistics=["image_id", "label", "split"],
)
ACTIVATION_ROW_GROUP_ROWS = 1 << 20  # ~1M rows: enough row groups for DuckDB to scan in parallel
FEATURE_ROW_GROUP_BYTES = 64 << 20
ROW_GROUPS_PER_FILE = 64
# One encoder thread does ~14M activation rows/s or ~70M vector values/s (zstd 1): at 50k img/s conv5's
# 9,216-value vectors alone need ~7 threads. Threads hold the GIL only for microseconds a batch.
MAX_THREADS_PER_PARTITION = 8
# Host buffers (pinned on CUDA) that batches cross between the device and the writers: the loop waits
# only to reuse one, i.e. when the device or the writers are RING_SLOTS batches behind it.
RING_SLOTS = 4
TOPK_MERGE_EVERY = 8  # batches between merges of the streaming top-k (see StreamingTopK)


def feature_schema(length: int, dtype: pa.DataType = pa.float16()) -> pa.Schema:
    """Schema of one features partition: ``vector`` is a fixed-size list of ``length`` values."""
    return pa.schema(
        [
            ("image_id", pa.dictionary(pa.int32(), pa.string())),
            ("label", pa.int32()),
            ("split", pa.dictionary(pa.int8(), pa.string())),
            ("vector", pa.list_(dtype, length)),
        ]
    )


@functools.lru_cache(maxsize=64)
def _row_index(n: int, channels: int) -> tuple[pa.Array, pa.Array]:
    """The image index and channel columns of n x channels rows; cached, since every full row group has
    the same n: the writer threads then hold the GIL (numpy's repeat/tile keep it) far less."""
    return pa.array(np.repeat(np.arange(n, dtype=np.int32), channels)), pa.array(np.tile(np.arange(channels, dtype=np.int16), n))


Chunks = np.ndarray | Sequence[np.ndarray]  # one [n, ...] array, or several stacked along the images


def _chunked(parts: Chunks, dtype: type, make=lambda flat: flat) -> pa.ChunkedArray:
    """``parts`` as one Arrow column, zero-copy over each part (no host concatenation under the GIL)."""
    parts = [parts] if isinstance(parts, np.ndarray) else parts
    return pa.chunked_array([make(pa.array(p.astype(dtype, copy=False).ravel())) for p in parts])


def activation_table(image_ids: Sequence[str], labels: np.ndarray, value: Chunks, y: Chunks, x: Chunks) -> pa.Table:
    """Rows of ``activations`` for ``n`` images x ``C`` channels, from [n, C] arrays (image-major), each
    given whole or as chunks of consecutive images."""
    channels = (value if isinstance(value, np.ndarray) else value[0]).shape[1]
    image_index, channel = _row_index(len(image_ids), channels)
    return pa.Table.from_arrays(
        [
            # safe=False: the indices are ours and in range; the check would hold the GIL over every row.
            pa.DictionaryArray.from_arrays(image_index, pa.array(list(image_ids), pa.string()), safe=False),
            pa.array(labels.astype(np.int32)).take(image_index),  # Arrow's take runs without the GIL, np.repeat with it
            channel,
            _chunked(value, np.float16),
            _chunked(y, np.int16),
            _chunked(x, np.int16),
        ],
        schema=ACTIVATION_SCHEMA,
    )


class PartitionWriter:
    """Appends [n, ...] batches to ``<root>/layer=<layer>/part-NNNNN.parquet`` in whole row groups.

    ``make_table(ids, labels, *chunk_lists)`` turns buffered batches into an Arrow table: one list of
    [n_i, ...] chunks per array argument of :meth:`append`. Batches are buffered (not copied) until a
    row group is full, so row groups stay large however small the batches are.
    """

    def __init__(
        self, root: Path, layer: str, rows_per_image: int, row_group_rows: int, make_table, schema, options: dict,
        first_file: int = 0, file_step: int = 1,
    ):
        self.dir = root / f"layer={layer}"
        # Several writers of one partition number their files first_file, first_file + file_step, ...
        self.first_file, self.file_step = first_file, file_step
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
        if self.writer is None or self.groups_in_file >= ROW_GROUPS_PER_FILE:
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


@dataclass
class LayerInfo:
    """What one layer contributed to the tables."""

    channels: int
    height: int
    width: int
    vector_length: int = 0  # 0 when the layer has no features partition


@dataclass
class ExtractionSummary:
    """The marker written last into an extraction folder (``_SUCCESS.json``)."""

    split: str
    images: int
    k: int
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    activation_layers: list[str] = field(default_factory=list)
    feature_layers: list[str] = field(default_factory=list)
    activation_rows: int = 0
    activation_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def load(cls, root: str | Path) -> ExtractionSummary:
        path = Path(root) / SUMMARY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no extraction summary; expected a folder written by zf_pipeline.features.extract")
        d = json.loads(path.read_text())
        d["layers"] = {name: LayerInfo(**info) for name, info in d["layers"].items()}
        return cls(**d)


def id_words(image_ids: Sequence[str] | pa.StringArray, words: int = 0) -> np.ndarray:
    """image_ids as [N, W] int64: 7 UTF-8 bytes per word, NUL-padded, so that comparing the words
    lexicographically compares the ids as DuckDB does (byte order; a prefix sorts first). W is ``words``
    (at least 1), or more where the longest id needs more. Arrow encodes, numpy pads: no Python work per id."""
    ids = image_ids if isinstance(image_ids, pa.StringArray) else pa.array(image_ids, pa.string())
    if ids.null_count:
        raise ValueError("image_ids: None is not an image id")
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset : ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if ids.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    words = max(words, 1, -(-int(lengths.max(initial=0)) // 7))
    column = np.arange(7 * words)
    at = np.minimum(offsets[:-1, None] + column, len(data) - 1)
    raw = np.where(column < lengths[:, None], data[at] if len(data) else 0, 0)
    b = raw.reshape(len(ids), words, 7).astype(np.int64)
    return (b << (8 * np.arange(6, -1, -1, dtype=np.int64))).sum(axis=2)


def id_ranks(words: np.ndarray) -> np.ndarray:
    """Each image's place in its batch by id, from :func:`id_words` (distinct ids)."""
    order = np.lexsort(words.T[::-1])  # np.lexsort's last key is the most significant
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def words_to_ids(words: np.ndarray) -> list[str]:
    """Inverse of :func:`id_words` for a [N, words] array."""
    b = (words[..., None] >> (8 * np.arange(6, -1, -1, dtype=np.int64))) & 0xFF
    raw = b.astype(np.uint8).reshape(len(words), -1)
    return [bytes(r).rstrip(b"\0").decode() for r in raw]


def _lexsort_rows(keys: list[tuple[torch.Tensor, bool]]) -> torch.Tensor:
    """Per-row permutation sorting [R, M] keys lexicographically; keys most significant first, (key, descending)."""
    perm = torch.arange(keys[0][0].shape[1], device=keys[0][0].device).expand_as(keys[0][0])
    for key, descending in reversed(keys):
        _, order = torch.sort(key.gather(1, perm), dim=1, stable=True, descending=descending)
        perm = perm.gather(1, order)
    return perm


class StreamingTopK:
    """The top-k images of every map, kept on the device across batches.

    Order: value descending, then image_id ascending. Within a batch, ``torch.topk`` runs on one
    int64 key (the float16 value's bits made orderable, then the image's rank by id in the batch). Every
    ``merge_every`` batches, their k best are merged with the running k by a stable lexicographic sort
    on (value, id words). The top-k of a union is the top-k of the parts' top-k, so the result is exact.
    Merging every few batches, not every batch, saves ~20 small device ops a batch on the loop's thread.
    """

    def __init__(self, maps: int, k: int, device: torch.device, merge_every: int = 0):
        self.k, self.device, self.merge_every = k, device, merge_every or TOPK_MERGE_EVERY
        self.value = torch.full((maps, k), -math.inf, device=device)
        self.ids = torch.zeros((maps, k, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((maps, k), dtype=torch.long, device=device)
        self.label = torch.full((maps, k), -1, dtype=torch.long, device=device)
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def candidates(
        k: int, bits: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, rank: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch's k best of every map (value bits, id words, pos, label) [maps, k'(, W)], on the device:
        ``bits`` [N, maps] are the float16 map maxima as int16 bits, the values the table holds (compiled,
        inductor may skip a float16 rounding between fused ops, and a value one bit off breaks ties
        differently from DuckDB); pos [N, maps], labels [N], the image ids as :func:`id_words` [N, W] and
        :func:`id_ranks` [N]. A pure function, so that :func:`extract` can compile it."""
        b = bits.long()
        key = (torch.where(b < 0, b ^ 0x7FFF, b) << 32) + (0xFFFFFFFF - rank)[:, None]  # float16 order as integers
        top = torch.topk(key, min(k, len(rank)), dim=0).indices.T  # [maps, k']
        return bits.T.gather(1, top), ids[top], pos.T.long().gather(1, top), labels.long()[top]

    def add(self, candidates: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Queue one batch's :meth:`candidates`; merged every ``merge_every`` batches."""
        self.pending.append(candidates)
        if len(self.pending) >= self.merge_every:
            self.merge()

    def merge(self) -> None:
        """Fold the pending batches' candidates into the running top-k."""
        if not self.pending:
            return
        words = max(self.ids.shape[2], *(c[1].shape[2] for c in self.pending))

        def pad(ids: torch.Tensor) -> torch.Tensor:  # shorter ids get NUL words: they sort first, as in DuckDB
            return F.pad(ids, (0, words - ids.shape[2])) if ids.shape[2] < words else ids

        # Eager on purpose: compiled (torch 2.11), inductor's fused per-row sort below indexed out of
        # bounds on an H100 (a device-side assert).
        cand_value = torch.cat([self.value, *(c[0].view(torch.float16).float() for c in self.pending)], dim=1)
        cand_ids = torch.cat([pad(self.ids), *(pad(c[1]) for c in self.pending)], dim=1)
        cand_pos = torch.cat([self.pos, *(c[2] for c in self.pending)], dim=1)
        cand_label = torch.cat([self.label, *(c[3] for c in self.pending)], dim=1)
        self.pending = []
        keys = [(cand_value, True)] + [(cand_ids[..., w], False) for w in range(words)]
        best = _lexsort_rows(keys)[:, : self.k]
        self.value = cand_value.gather(1, best)
        self.ids = cand_ids.gather(1, best[..., None].expand(-1, -1, words))
        self.pos = cand_pos.gather(1, best)
        self.label = cand_label.gather(1, best)

    def table(self, layers: dict[str, LayerInfo], layer_names: Sequence[str]) -> pa.Table:
        """The result as rows (layer, channel, rank, image_id, label, value, y, x), like ``mine_top9``."""
        self.merge()
        value = self.value.cpu().numpy()
        valid = np.isfinite(value)  # fewer than k images: the -inf padding is dropped
        maps, k = value.shape
        names, channels, widths = [], [], []
        for name in layer_names:
            info = layers[name]
            names += [name] * info.channels
            channels.append(np.arange(info.channels))
            widths.append(np.full(info.channels, info.width))
        width = np.repeat(np.concatenate(widths), k).reshape(maps, k)
        pos = self.pos.cpu().numpy()
        ids = words_to_ids(self.ids.cpu().numpy().reshape(maps * k, -1))
        flat = valid.ravel()
        return pa.table(
            {
                "layer": pa.array(np.repeat(np.array(names, dtype=object), k)[flat], pa.string()),
                "channel": pa.array(np.repeat(np.concatenate(channels), k)[flat].astype(np.int16)),
                "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int8), maps)[flat]),
                "image_id": pa.array([i for i, ok in zip(ids, flat) if ok], pa.string()),
                "label": pa.array(self.label.cpu().numpy().ravel()[flat].astype(np.int32)),
                "value": pa.array(value.ravel()[flat].astype(np.float32)),
                "y": pa.array((pos // width).ravel()[flat].astype(np.int16)),
                "x": pa.array((pos % width).ravel()[flat].astype(np.int16)),
            }
        )


def layer_outputs(
    model: ZFNet, images: torch.Tensor, activation_layers: Sequence[str], feature_layers: Sequence[str], grid: int = CONV_FEATURE_GRID
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The device side of one batch: per-map maxima and their flat positions, and feature vectors.

    Returns ``value`` [N, maps] (float16, maps of ``activation_layers`` concatenated in order),
    ``pos`` [N, maps] (int32, y * width + x of the first maximum) and ``{layer: vector [N, length]}``.
    """
    acts = model.forward_layers(images, list(dict.fromkeys([*activation_layers, *feature_layers])))
    return summarize(model, acts, activation_layers, feature_layers, grid)


def _map_maxima(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and flat position (y * width + x, the first one on ties) of every map of a [N, C, H, W] or [N, C] batch."""
    if a.dim() == 2:  # an fc unit is a 1x1 map
        return a, torch.zeros_like(a, dtype=torch.long)
    if a.is_contiguous(memory_format=torch.channels_last):
        # [N, H*W, C] is a view of channels_last memory: reducing over dim 1 needs no transposed copy.
        return a.permute(0, 2, 3, 1).flatten(1, 2).max(dim=1)
    return a.flatten(2).max(dim=2)


def summarize(
    model: ZFNet, acts: dict[str, torch.Tensor], activation_layers: Sequence[str], feature_layers: Sequence[str], grid: int = CONV_FEATURE_GRID
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`layer_outputs` from the activations ``acts`` of one batch (``model.forward_layers``'s result).

    Apart from the forward pass, so that it also summarizes activations computed elsewhere (the atlas,
    tests), and so that :func:`extract` compiles it apart from the forward (see there). Ties go to the
    first maximum, eager and compiled (checked on the CPU and on CUDA by ``test_compiled_pass_equals_eager``).
    """
    values, positions = [], []
    for name in activation_layers:
        v, p = _map_maxima(acts[name])
        values.append(v)
        positions.append(p)
    vectors = {}
    for name in feature_layers:
        a = acts[name]
        if a.dim() == 4:
            a = model.pool5(a) if name == "conv5" else F.adaptive_max_pool2d(a, grid)
        vectors[name] = a.flatten(1).to(torch.float16)
    first = next(iter(acts.values()))
    value = torch.cat(values, dim=1).to(torch.float16) if values else first.new_zeros((len(first), 0), dtype=torch.float16)
    pos = torch.cat(positions, dim=1).int() if positions else first.new_zeros((len(first), 0), dtype=torch.int32)
    return value, pos, vectors


def _forward(model: ZFNet, names: tuple[str, ...], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The forward pass of :func:`extract`: the activations of ``names``."""
    return model.forward_layers(images, list(names))


def _batch_outputs(
    model: ZFNet, act_layers: tuple[str, ...], feature_layers: tuple[str, ...], widths: torch.Tensor, k: int,
    acts: dict[str, torch.Tensor], labels: torch.Tensor, keys: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """The rest of one batch of :func:`extract` on the device: the packed copy for the host
    (:meth:`_Writers.pack`), whether all map maxima are finite, and the batch's
    :meth:`StreamingTopK.candidates` (``keys``: the images' id ranks, then their id words, as rows; None: no
    top-k). ``widths``: the map width of every activations column."""
    value, pos, vectors = summarize(model, acts, act_layers, feature_layers)
    # y and x are split off here, where the integer division is free (on the host it was the writers' largest cost).
    y = torch.div(pos, widths, rounding_mode="floor")
    x = (pos - y * widths).short()
    # One [3, N, maps] int16 block (value bits, y, x) for all layers: the host cuts it into layers as views,
    # and the writers copy their columns out.
    block = torch.stack([value.view(torch.int16), y.short(), x])
    top = None if keys is None else StreamingTopK.candidates(k, block[0], pos, labels, keys[1:].T, keys[0])
    return _Writers.pack(labels, block, list(vectors.values())), torch.isfinite(value).all(), top


def _outputs_agree(writers: _Writers, eager: torch.Tensor, compiled: torch.Tensor, n: int, tolerance: float = 2e-2) -> bool:
    """Whether one batch's packed outputs (:meth:`_Writers.pack`, ``n`` images) agree up to rounding: the
    map maxima, and the vectors, within ``tolerance`` of their largest magnitude.
    Other kernels round differently: on the demo's trained net on an H100, by up to 2e-4 of it in float32
    (cuDNN's TF32 convolutions) and 5e-3 under bf16 autocast (one bf16 step); a wrong graph
    (docs/results/extraction.md, run I) was off by 0.4-1.1 of it. Positions are not compared: rounding may break a
    near-tie the other way."""
    parts = []
    for flat in (eager, compiled):
        _, block, *vectors = torch.split(flat, writers.part_sizes(n))
        values = block[: n * writers.maps]  # the value row of the [3, n, maps] block
        parts.append([t.view(torch.float16).float() for t in (values, torch.cat([values[:0], *vectors]))])
    for e, c in zip(*parts):
        if e.numel() and float((e - c).abs().nan_to_num(nan=math.inf).max()) > tolerance * float(e.abs().max()):
            return False
    return True


@functools.cache
def _compiled(fn):
    """``fn`` compiled once per process, so that later passes reuse its graphs (one per batch shape and layer
    choice) instead of recompiling a fresh closure each time (dynamo falls back to eager after 8)."""
    return torch.compile(fn, dynamic=False)


def _layer_shapes(model: ZFNet, sample: torch.Tensor, act_layers: Sequence[str], feature_layers: Sequence[str]) -> dict[str, LayerInfo]:
    """Map sizes and vector lengths, from one image (widths vary across the Table 1 variants)."""
    names = list(dict.fromkeys([*act_layers, *feature_layers]))
    with torch.inference_mode():
        acts = model.forward_layers(sample[:1], names)
        _, _, vectors = summarize(model, acts, [], feature_layers)
    shapes = {}
    for name in names:
        s = acts[name].shape
        shapes[name] = LayerInfo(
            channels=s[1],
            height=s[2] if len(s) == 4 else 1,
            width=s[3] if len(s) == 4 else 1,
            vector_length=vectors[name].shape[1] if name in vectors else 0,
        )
    return shapes


def extract(
    model: ZFNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]],
    out_dir: str | Path,
    *,
    split: str,
    layers: Sequence[str] = FEATURE_LAYERS,
    activation_layers: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    k: int = 9,
    autocast: torch.dtype | None = None,
    compile: bool = False,
    row_group_rows: int = ACTIVATION_ROW_GROUP_ROWS,
) -> ExtractionSummary:
    """One pass of ``model`` over ``batches``, writing ``out_dir/{activations,features}`` and the streaming top-k.

    ``batches`` yields (images [N,3,S,S] float, preprocessed; labels [N] int; image_ids list[str]).
    ``layers`` get a ``features`` partition; ``activation_layers`` (default: the same layers) get
    ``activations`` rows and the streaming top-``k``. Layers absent from the model raise KeyError.
    ``autocast`` (e.g. torch.bfloat16) runs the net in reduced precision; ``compile`` uses torch.compile.
    Nothing appears at ``out_dir`` unless the whole pass succeeds. Returns the summary also
    written as ``_SUCCESS.json``.
    """
    device = torch.device(device)
    act_layers = list(layers if activation_layers is None else activation_layers)
    summary = ExtractionSummary(split=split, images=0, k=k, activation_layers=act_layers, feature_layers=list(layers))
    missing = [name for name in dict.fromkeys([*layers, *act_layers]) if name not in model.layers]
    if missing:
        raise KeyError(f"layers {missing} are not in this network (it has {list(model.layers)})")
    names = tuple(dict.fromkeys([*act_layers, *layers]))
    if not names:
        raise ValueError("no layers: give `layers` and/or `activation_layers`")
    model = model.eval().to(device)
    # Compiled, a batch is two calls from the loop's thread besides the top-k merge (eager, that thread paid
    # ~70 small ops a batch besides the forward, each a launch and a GIL hand-off, and it bounded the pass:
    # docs/results/extraction.md, run F). Two graphs, not one: with the forward and the maxima in one graph,
    # inductor (torch 2.11) computed wrong map maxima for the demo's trained net on an H100 (off by up to
    # 20-58 where the largest is 52-64, 1% of the positions); apart, both match the eager pass. The merge
    # stays eager: compiled, inductor's fused per-row sort indexed out of bounds on an H100.
    forward, outputs = (_compiled(_forward), _compiled(_batch_outputs)) if compile else (_forward, _batch_outputs)
    checked: set[int] = set()  # batch sizes whose compiled graphs were checked against eager
    started = last_log = time.monotonic()
    seen: set[str] = set()
    with atomic_path(out_dir) as tmp:
        writers: _Writers | None = None
        ring: _HostRing | None = None
        topk: StreamingTopK | None = None
        try:
            for images, labels, image_ids in batches:
                image_ids = list(image_ids)
                _check_batch(images, labels, image_ids, seen, split)
                images = images.to(device, non_blocking=True)
                if writers is None:
                    summary.layers = _layer_shapes(model, images, act_layers, layers)
                    writers = _Writers(Path(tmp), summary, row_group_rows)
                    ring = _HostRing(writers, device)
                    maps = sum(summary.layers[n].channels for n in act_layers)
                    topk = StreamingTopK(maps, k, device) if maps else None
                    finite = torch.ones((), dtype=torch.bool, device=device)
                    widths = torch.tensor([summary.layers[n].width for n in act_layers for _ in range(summary.layers[n].channels)],
                                          dtype=torch.int32, device=device)
                slot = ring.acquire()  # the loop's only wait: for a slot the copier has not emptied yet
                with torch.inference_mode():
                    # The small inputs go up in one copy from the slot's pinned buffer, as int64 rows: the
                    # labels when they come on the host, then the top-k's id keys (rank in the batch, words).
                    on_host = labels.device.type == "cpu"
                    rows = [labels.numpy().astype(np.int64)[None]] if on_host else []
                    if topk is not None:
                        words = id_words(image_ids)
                        rows += [id_ranks(words)[None], words.T]
                    up = slot.upload(np.concatenate(rows)) if rows else None
                    labels = up[0] if on_host else labels.to(device, non_blocking=True)
                    with torch.autocast(device.type, autocast or torch.float32, enabled=autocast is not None):
                        args = (model, tuple(act_layers), tuple(layers), widths, k)
                        keys = None if topk is None else up[int(on_host) :]
                        packed, batch_finite, top = outputs(*args, forward(model, names, images), labels, keys)
                        if forward is not _forward and len(image_ids) not in checked:
                            # Each batch shape has its own graphs: each is trusted once it agrees with eager.
                            checked.add(len(image_ids))
                            eager = _batch_outputs(*args, _forward(model, names, images), labels, keys)
                            if not _outputs_agree(writers, eager[0], packed, len(image_ids)):
                                log.warning("split %r: the compiled pass gave other map maxima or vectors than the eager one on "
                                            "a batch of %d (a compiler bug); this pass runs eager", split, len(image_ids))
                                forward, outputs = _forward, _batch_outputs
                                packed, batch_finite, top = eager
                    # Checked once at the end: a check per batch would make the host wait for the device.
                    finite = finite & batch_finite
                    if topk is not None:
                        topk.add(top)
                    slot.download(packed)
                ring.send(slot, image_ids)
                summary.images += len(image_ids)
                if time.monotonic() - last_log >= 10:
                    last_log = time.monotonic()
                    log.info("extraction of %r: %d images, %.0f img/s", split, summary.images, summary.images / (last_log - started))
        finally:
            if ring is not None:
                ring.close()  # drains the slots, then closes the writers
        if writers is None:
            raise ValueError(f"no batches: nothing to extract for split {split!r}")
        if not finite:
            raise ValueError(f"split {split!r}: non-finite map maxima (float16 overflows above 65504); nothing was written")
        for name in act_layers:
            files = (Path(tmp) / "activations" / f"layer={name}").glob("*.parquet")
            summary.activation_bytes[name] = sum(f.stat().st_size for f in files)
        summary.activation_rows = writers.activation_rows
        if topk is not None:
            pq.write_table(topk.table(summary.layers, act_layers), Path(tmp) / f"stream_top{k}.parquet")
        summary.seconds = time.monotonic() - started
        (Path(tmp) / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=1))
    log.info("extracted %d images of split %r in %.1f s -> %s", summary.images, split, summary.seconds, out_dir)
    return summary


def _check_batch(images: torch.Tensor, labels: torch.Tensor, image_ids: list[str], seen: set[str], split: str) -> None:
    """Reject malformed batches and repeated image_ids (the tables are keyed by image_id)."""
    if images.dim() != 4 or len(labels) != len(images) or len(image_ids) != len(images):
        raise ValueError(
            f"split {split!r}: expected a batch of images [N,3,S,S], labels [N], N image_ids; got images "
            f"{tuple(images.shape)}, {len(labels)} labels, {len(image_ids)} ids (after {len(seen)} images)"
        )
    before = len(seen)
    seen.update(image_ids)
    if len(seen) != before + len(image_ids):
        raise ValueError(f"split {split!r}: duplicate image_id in the batch starting at {image_ids[0]!r}")


class _Writers:
    """The writer threads of one pass: for every activations and features partition, one or more threads,
    each with its own files, taking whole row groups in turn (so row order inside a file stays image order).

    Whole row groups, not whole batches: a thread starts encoding as soon as the images of one row group
    have come, and the pass ends with one partial row group per partition left to encode, not one per
    thread (with batches in turn, a 25,600-image pass left nearly all its encoding until after its last batch).
    """

    def __init__(self, root: Path, summary: ExtractionSummary, row_group_rows: int):
        acts = [summary.layers[name] for name in summary.activation_layers]
        feats = [summary.layers[name] for name in summary.feature_layers]
        # The cores are shared by the encoding work per image: an activations row costs about 5x a vector value.
        # Rounded up: a partition one thread short stalls the whole pass, a spare thread only waits.
        costs = [5 * info.channels for info in acts] + [info.vector_length for info in feats]
        cores = os.cpu_count() or 1
        counts = iter([max(1, min(MAX_THREADS_PER_PARTITION, math.ceil(cores * c / sum(costs)))) for c in costs])
        self.activations = [
            _start(next(counts), root / "activations", name, info.channels, row_group_rows, activation_table, ACTIVATION_SCHEMA, ACTIVATION_WRITE_OPTIONS)
            for name, info in zip(summary.activation_layers, acts)
        ]
        self.features: list[list[_WriterThread]] = []
        for name, info in zip(summary.feature_layers, feats):
            schema = feature_schema(info.vector_length)
            rows = max(1, FEATURE_ROW_GROUP_BYTES // (2 * info.vector_length))
            make = _feature_rows(summary.split, schema)
            self.features.append(_start(next(counts), root / "features", name, 1, rows, make, schema, FEATURE_WRITE_OPTIONS))
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
    """One batch's host buffers, pinned on CUDA so that neither copy waits: ``up`` stages the batch's small
    inputs for the device, ``down`` receives its packed outputs; ``event`` marks both copies done."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"
        self.up = torch.empty(0, dtype=torch.int64)
        self.down = torch.empty(0, dtype=torch.int16)
        self.used = 0  # elements of ``down`` the last download filled
        # blocking: the copier thread sleeps in synchronize() instead of spinning on a core the writers need.
        self.event = torch.cuda.Event(blocking=True) if self.pinned else None

    def _room(self, buffer: torch.Tensor, numel: int) -> torch.Tensor:
        """``buffer``, or a larger one (a longer batch or longer ids: allocated once, then reused)."""
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


class _HostRing(threading.Thread):
    """RING_SLOTS slots between the extraction loop and the writers, and the thread that empties them.

    The loop takes a free slot (it waits only while none is free), queues its batch's copies into it
    and sends it here, in batch order. This thread waits for the slot's event, copies the batch out
    into a pageable array (the writers buffer parts for whole row groups, far longer than a slot can
    wait), frees the slot and hands views of the copy to the writer threads. So the loop never waits
    for the device, and a writer behind by a row group holds no slot.

    One copy and numpy views, not a torch copy per part: each torch call drops the GIL and must take it
    back against a dozen writer threads, and that hand-off, not the bytes, bounded the pass (0.13 of the
    forward pass on an H200, docs/results/extraction.md). A copy stays alive until the last partition
    has written its part: at most one activations row group of batches (~11k images, ~0.5 GB with all
    seven layers' vectors).
    """

    def __init__(self, writers: _Writers, device: torch.device, slots: int = RING_SLOTS):
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


def _column_slices(channels: Sequence[int]) -> list[slice]:
    """The columns of each layer in the concatenated [N, maps] outputs."""
    ends = np.cumsum(channels).tolist()
    return [slice(end - c, end) for c, end in zip(channels, ends)]


def _start(n: int, root: Path, layer: str, rows_per_image: int, row_group_rows: int, make_table, schema, options: dict) -> list[_WriterThread]:
    """``n`` running writer threads of one partition; thread i writes files i, i + n, i + 2n, ..."""
    threads = [
        _WriterThread(PartitionWriter(root, layer, rows_per_image, row_group_rows, make_table, schema, options, first_file=i, file_step=n))
        for i in range(n)
    ]
    for t in threads:
        t.start()
    return threads


def _feature_rows(split: str, schema: pa.Schema):
    length = schema.field("vector").type.list_size

    def make(ids: list[str], labels: np.ndarray, vector: Chunks) -> pa.Table:
        n = len(ids)
        return pa.Table.from_arrays(
            [
                pa.DictionaryArray.from_arrays(pa.array(np.arange(n, dtype=np.int32)), pa.array(ids, pa.string()), safe=False),
                pa.array(labels.astype(np.int32)),
                pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([split]), safe=False),
                _chunked(vector, np.float16, lambda flat: pa.FixedSizeListArray.from_arrays(flat, length)),
            ],
            schema=schema,
        )

    return make


# --- Sharded passes: one process per GPU, each over its own shards, then one merge. ---

PARTS_SUFFIX = ".parts"


def parts_dir(out_dir: str | Path) -> Path:
    """Where the ranks of a sharded pass write their folders before the merge: ``<out_dir>.parts``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + PARTS_SUFFIX)


def extract_part(
    model: ZFNet,
    shards: Split,
    mean: torch.Tensor,
    out_dir: str | Path,
    *,
    split: str,
    rank: int,
    world_size: int,
    crop: int,
    input_scale: float = 1.0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    **kwargs,
) -> ExtractionSummary:
    """Rank ``rank`` of ``world_size``: :func:`extract` over ``shards.shards[rank::world_size]`` only, as ``split``.

    The part lands in ``parts_dir(out_dir)/rank-RRRRR-of-WWWWW`` (a complete extraction folder);
    :func:`merge_parts` joins the parts into ``out_dir``. ``mean`` is 3 x S x S on ``device``;
    ``kwargs`` go to :func:`extract`.
    """
    from dataclasses import replace

    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    mine = replace(shards, shards=shards.shards[rank::world_size])  # num_images stays the whole split's: only the shard list is read
    if not mine.shards:
        raise ValueError(f"{shards.root}: {len(shards.shards)} shards leave none for rank {rank} of {world_size}")
    log.info("rank %d/%d: %d of %d shards of %s", rank, world_size, len(mine.shards), len(shards.shards), shards.root)
    batches = network_inputs(mine, mean, crop, batch_size, device, input_scale)
    part = parts_dir(out_dir) / f"rank-{rank:05d}-of-{world_size:05d}"
    return extract(model, batches, part, split=split, device=device, **kwargs)


def merge_parts(out_dir: str | Path) -> ExtractionSummary:
    """Join the rank folders of a sharded pass into ``out_dir``, the layout one :func:`extract` writes.

    Each rank's ``part-NNNNN`` files become ``part-RRRRR-NNNNN`` in the same hive partitions; the
    streaming top-k is re-ranked over the union (value descending, then image_id ascending);
    ``_SUCCESS.json`` sums the parts and is written last. Fails, writing nothing, unless every
    rank's part is complete. The parts folder is removed afterwards.
    """
    import shutil

    import pyarrow.compute as pc

    parts_root = parts_dir(out_dir)
    parts = sorted(parts_root.glob("rank-*-of-*"))
    if not parts:
        raise FileNotFoundError(f"{parts_root}: no rank-*-of-* folders; expected the parts of a sharded extraction")
    world = {int(p.name.split("-of-")[1]) for p in parts}
    if len(world) != 1 or len(parts) != world.pop():
        raise ValueError(f"{parts_root}: found {[p.name for p in parts]}; expected one complete part per rank of one world size")
    summaries = [ExtractionSummary.load(p) for p in parts]  # raises for a rank that did not finish
    first = summaries[0]
    for p, s in zip(parts, summaries):
        if (s.split, s.k, s.layers, s.activation_layers, s.feature_layers) != (first.split, first.k, first.layers, first.activation_layers, first.feature_layers):
            raise ValueError(f"{p}: its layers/split/k differ from {parts[0]}'s; the parts are not of one pass")
    with atomic_path(out_dir) as tmp:
        tmp = Path(tmp)
        for rank, part in enumerate(parts):
            for f in sorted(part.glob("*/layer=*/part-*.parquet")):
                dest = tmp / f.parent.relative_to(part) / f"part-{rank:05d}-{f.name.removeprefix('part-')}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
        name = f"stream_top{first.k}.parquet"
        if (parts[0] / name).is_file():
            top = pa.concat_tables([pq.read_table(p / name) for p in parts])
            top = top.sort_by([("layer", "ascending"), ("channel", "ascending"), ("value", "descending"), ("image_id", "ascending")])
            layer, channel = top["layer"].to_numpy(zero_copy_only=False), top["channel"].to_numpy()
            new_map = np.ones(len(top), dtype=bool)
            new_map[1:] = (layer[1:] != layer[:-1]) | (channel[1:] != channel[:-1])
            start = np.maximum.accumulate(np.where(new_map, np.arange(len(top)), 0))
            rank_in_map = np.arange(len(top)) - start + 1
            top = top.set_column(top.schema.get_field_index("rank"), "rank", pa.array(rank_in_map.astype(np.int8)))
            pq.write_table(top.filter(pc.less_equal(top["rank"], first.k)), tmp / name)
        merged = ExtractionSummary(
            split=first.split, images=sum(s.images for s in summaries), k=first.k, layers=first.layers,
            activation_layers=first.activation_layers, feature_layers=first.feature_layers,
            activation_rows=sum(s.activation_rows for s in summaries),
            activation_bytes={n: sum(s.activation_bytes.get(n, 0) for s in summaries) for n in first.activation_layers},
            seconds=max(s.seconds for s in summaries),  # the ranks run side by side
        )
        (tmp / SUMMARY_FILE).write_text(json.dumps(asdict(merged), indent=1))
    shutil.rmtree(parts_root)
    log.info("merged %d parts (%d images) into %s", len(parts), merged.images, out_dir)
    return merged


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``extract`` one rank's share (rank and world from torchrun's RANK / WORLD_SIZE / LOCAL_RANK), or ``merge``.

        torchrun --nproc-per-node 2 -m zf_pipeline.features extract --checkpoint last.pt --shards DIR \\
            --mean pixel_mean.npy --split val --out features/val --crop 224 --bf16 --compile
        python -m zf_pipeline.features merge --out features/val
    """
    import argparse
    import os

    from zf_pipeline.models.checkpoint import load_model

    p = argparse.ArgumentParser(prog="python -m zf_pipeline.features", description=main.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="this rank's share of a sharded pass")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--shards", required=True, help="a shard folder (summary.json, manifest.parquet, tars)")
    ex.add_argument("--mean", required=True, help="the per-pixel mean image (.npy, S x S x 3)")
    ex.add_argument("--split", required=True, help="the split name written into the features rows")
    ex.add_argument("--out", required=True)
    ex.add_argument("--crop", type=int, default=224)
    ex.add_argument("--input-scale", type=float, default=1.0)
    ex.add_argument("--batch-size", type=int, default=256)
    ex.add_argument("--layers", nargs="+", help="feature layers (default: every one the net has)")
    ex.add_argument("--bf16", action="store_true")
    ex.add_argument("--compile", action="store_true")
    mg = sub.add_parser("merge", help="join the ranks' parts into --out")
    mg.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "merge":
        merge_parts(args.out)
        return
    rank, world, local = (int(os.environ.get(k, "0")) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    world = world or 1
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, device)
    layers = args.layers or [name for name in FEATURE_LAYERS if name in model.layers]
    split = open_split(args.shards)
    mean = load_mean(args.mean, split.size).to(device)
    extract_part(model, split, mean, args.out, rank=rank, world_size=world, crop=args.crop, input_scale=args.input_scale,
                 batch_size=args.batch_size, device=device, split=args.split, layers=layers,
                 autocast=torch.bfloat16 if args.bf16 and device.type == "cuda" else None, compile=args.compile)


if __name__ == "__main__":
    main()
