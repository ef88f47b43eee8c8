"""The on-disk layout of an extraction: the Parquet schemas and writer settings, the Arrow tables of a
batch, and the summary written last (``_SUCCESS.json``)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

SUMMARY_FILE = "_SUCCESS.json"

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
    image_index = np.repeat(np.arange(n, dtype=np.int32), channels)
    return pa.array(image_index), pa.array(np.tile(np.arange(channels, dtype=np.int16), n))


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


def feature_rows(split: str, schema: pa.Schema) -> Callable[[list[str], np.ndarray, Chunks], pa.Table]:
    """The table maker of one features partition: (image_ids, labels, vector chunks) -> rows of ``schema``."""
    length = schema.field("vector").type.list_size

    def make(ids: list[str], labels: np.ndarray, vector: Chunks) -> pa.Table:
        n = len(ids)
        return pa.Table.from_arrays(
            [
                pa.DictionaryArray.from_arrays(pa.array(np.arange(n, dtype=np.int32)), pa.array(ids, pa.string()),
                                               safe=False),
                pa.array(labels.astype(np.int32)),
                pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([split]), safe=False),
                _chunked(vector, np.float16, lambda flat: pa.FixedSizeListArray.from_arrays(flat, length)),
            ],
            schema=schema,
        )

    return make


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
            raise FileNotFoundError(f"{path}: no extraction summary; expected a folder written by "
                                    "zf_pipeline.features.extract")
        d = json.loads(path.read_text())
        try:
            d["layers"] = {name: LayerInfo(**info) for name, info in d["layers"].items()}
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: not an extraction summary of this version ({e}); extract the split again") from e
