"""The per-pixel mean image over the training set, subtracted from every input (paper, Sec. 3)."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from zf_pipeline.data.shard_format import iter_shard, load_summary, shard_paths
from zf_pipeline.io import atomic_path
from zf_pipeline.workers import process_pool

logger = logging.getLogger(__name__)


def _shard_sum(path: Path, size: int) -> tuple[np.ndarray, int]:
    """Sum (float64, exact for integer pixels) and count of the decoded images of one shard."""
    total = np.zeros((size, size, 3), dtype=np.float64)
    count = 0
    for sample in iter_shard(path):
        pixels = np.asarray(Image.open(io.BytesIO(sample.jpeg)).convert("RGB"))
        if pixels.shape != total.shape:
            raise ValueError(
                f"{path}: sample {sample.key} is {pixels.shape}, expected {total.shape} (summary.json size)"
            )
        total += pixels
        count += 1
    return total, count


def compute_pixel_mean(shard_dir: str | os.PathLike, workers: int | None = None) -> np.ndarray:
    """Mean over all images written to a finished shard folder (pass the training split's), per pixel and
    channel: float32 (size, size, 3), RGB in 0..255. Shards are summed in parallel, ``workers`` processes.
    """
    size = load_summary(shard_dir)["size"]
    paths = shard_paths(shard_dir)
    workers = min(workers or os.cpu_count() or 1, max(len(paths), 1))
    tasks = [(path, size) for path in paths]
    if workers == 1:
        sums = [_shard_sum(*task) for task in tasks]
    else:
        with process_pool(workers) as pool:
            # One shard a task: starmap's default chunks (len / 4 workers) leave most workers idle in the last
            # round (257 ImageNet shards on 16 workers: 20 shards' time for 16 shards' work).
            sums = pool.starmap(_shard_sum, tasks, chunksize=1)
    count = sum(count for _, count in sums)
    if count == 0:
        raise ValueError(f"{shard_dir}: no images were written, so there is no pixel mean")
    logger.info("pixel mean over %d images of %s", count, shard_dir)
    return (sum(total for total, _ in sums) / count).astype(np.float32)


def save_pixel_mean(path: str | os.PathLike, mean: np.ndarray) -> None:
    """Write ``mean`` as a float32 .npy (no pickle), atomically."""
    _check(path, mean)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.save(file, mean.astype(np.float32), allow_pickle=False)


def load_pixel_mean(path: str | os.PathLike) -> np.ndarray:
    """Read a mean image written by :func:`save_pixel_mean`: float32 (size, size, 3)."""
    mean = np.load(path, allow_pickle=False)
    _check(path, mean)
    return mean


def _check(path: str | os.PathLike, mean: np.ndarray) -> None:
    if mean.ndim != 3 or mean.shape[0] != mean.shape[1] or mean.shape[2] != 3:
        raise ValueError(f"{path}: pixel mean has shape {mean.shape}, expected (size, size, 3)")
