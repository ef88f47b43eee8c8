"""Read one layer's feature matrix from the features stage's Parquet (``features/layer=<layer>/part-*.parquet``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FEATURE_COLUMNS = ("image_id", "label", "split", "vector")


def vectors_to_numpy(column: pa.ChunkedArray | pa.Array, where: str = "vector column") -> np.ndarray:
    """A (fixed-size) list<float> column as a float32 ``[N, D]`` array, without a Python loop over rows."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError(f"{where}: {array.null_count} rows have no vector")
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise ValueError(f"{where}: vectors have different lengths ({lengths.min()} to {lengths.max()})")
        width = int(lengths[0]) if len(lengths) else 0
    else:
        raise ValueError(f"{where}: expected a list of floats, got {array.type}")
    # flatten() honours slicing offsets, so the values line up with the rows.
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(array), width)


def load_features(
    features_dir: str | os.PathLike, layer: str, split: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N, D] float32, y [N] int64, image_ids [N] object)`` of one layer, optionally of one split.

    Rows are sorted by image id so that the result does not depend on how the parts were written.
    """
    folder = Path(features_dir) / f"layer={layer}"
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{folder}: expected Parquet files part-*.parquet with columns {FEATURE_COLUMNS}")
    try:
        table = pq.read_table(parts)
    except pa.ArrowException as error:
        raise ValueError(f"{folder}: cannot read the Parquet parts {[p.name for p in parts]}: {error}") from error
    missing = [c for c in FEATURE_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{folder}: missing columns {missing}; expected {FEATURE_COLUMNS}")
    # The features stage dictionary-encodes the string columns; sorting and filtering want plain strings.
    for name in ("image_id", "split"):
        if pa.types.is_dictionary(table.schema.field(name).type):
            table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(pa.string()))
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    table = table.sort_by("image_id")
    X = vectors_to_numpy(table["vector"], where=f"{folder} vector column")
    y = table["label"].to_numpy().astype(np.int64)
    image_ids = np.asarray(table["image_id"].to_pylist(), dtype=object)
    return X, y, image_ids
