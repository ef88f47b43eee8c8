"""Shard folders for tests from in-memory images, written by the real writer (``zf_pipeline.data.shards``).

The images are saved as lossless PNG files next to ``out`` (the writer reads files), so the only
loss is the writer's own JPEG encoding. Order follows the contract: train shuffled, other splits by image_id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from zf_pipeline.data.pixel_mean import compute_pixel_mean, save_pixel_mean
from zf_pipeline.data.records import ImageRecord, ImageSet
from zf_pipeline.data.shards import write_shards


def write_split(
    images: Sequence[Image.Image | np.ndarray],
    labels: Sequence[int],
    out: Path,
    split: str,
    classes: Sequence[str],
    size: int = 256,
    quality: int = 90,
    per_shard: int = 64,
) -> Path:
    """Write ``images`` (PIL images or HxWx3 uint8 arrays) as one sharded split in ``out``."""
    out = Path(out)
    src = out.parent / f"{out.name}_images"
    records = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = src / classes[label] / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        (Image.fromarray(image) if isinstance(image, np.ndarray) else image).convert("RGB").save(path)
        records.append(ImageRecord(f"{classes[label]}/{i:06d}", str(path), int(label), classes[label]))
    images_set = ImageSet("test", src, split, list(classes), list(classes), records)
    write_shards(images_set, out, size=size, quality=quality, images_per_shard=per_shard, workers=1, progress=False)
    return out


def write_mean(split_dir: Path, path: Path) -> np.ndarray:
    """The per-pixel mean image (size, size, 3) float32 over a written split, saved as ``path``."""
    mean = compute_pixel_mean(split_dir, workers=1)
    save_pixel_mean(path, mean)
    return mean
