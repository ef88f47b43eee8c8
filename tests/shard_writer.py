"""A minimal writer of the shard format contract, for test fixtures and device staging.

Stands in for ``zf_pipeline.data.shards`` (owned by the sharding engineer) so that the loader and
the trainer can be tested against the contract on their own: tar shards of ``<key>.jpg/.cls/.json``,
``manifest.parquet``, ``skipped.parquet``, ``classes.json``, then ``summary.json`` last.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def square(image: Image.Image, size: int) -> Image.Image:
    """Smaller side resized to ``size``, then the center size x size crop (the contract's preprocessing)."""
    image = image.convert("RGB")
    w, h = image.size
    s = size / min(w, h)
    image = image.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


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
    """Write ``images`` (PIL images or HxWx3 uint8 arrays) as one sharded split in ``out``, in the given order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, shards = [], []
    tar = None
    for i, (image, label) in enumerate(zip(images, labels)):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            shards.append(f"{split}-{len(shards):06d}.tar")
            tar = tarfile.open(out / shards[-1], "w")
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        buf = io.BytesIO()
        square(image, size).save(buf, "JPEG", quality=quality)
        key = f"{i:09d}"
        image_id = f"{classes[label]}/{i:06d}"
        meta = {"image_id": image_id, "label": int(label), "class_id": classes[label], "source": image_id, "labels": []}
        _member(tar, f"{key}.jpg", buf.getvalue())
        _member(tar, f"{key}.cls", str(int(label)).encode())
        _member(tar, f"{key}.json", json.dumps(meta).encode())
        rows.append((image_id, image_id, split, shards[-1], key, int(label), classes[label]))
    if tar is not None:
        tar.close()
    names = ["image_id", "source", "split", "shard", "key", "label", "class_id"]
    cols = list(zip(*rows)) if rows else [[] for _ in names]
    types = [pa.string()] * 5 + [pa.int32(), pa.string()]
    pq.write_table(pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types)}), out / "manifest.parquet")
    skipped = pa.table({"image_id": pa.array([], pa.string()), "source": pa.array([], pa.string()), "reason": pa.array([], pa.string())})
    pq.write_table(skipped, out / "skipped.parquet")
    (out / "classes.json").write_text(json.dumps({"classes": list(classes), "class_names": list(classes)}))
    summary = {"split": split, "images_in": len(rows), "images_written": len(rows), "images_skipped": 0,
               "shards": shards, "size": size, "quality": quality, "seed": 0}
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def write_mean(split_dir: Path, path: Path) -> np.ndarray:
    """The per-pixel mean image (size, size, 3) float32 over a written split, saved as ``path``."""
    total, n = None, 0
    for shard in json.loads((Path(split_dir) / "summary.json").read_text())["shards"]:
        with tarfile.open(Path(split_dir) / shard) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    a = np.asarray(Image.open(tar.extractfile(m)).convert("RGB"), dtype=np.float64)
                    total = a if total is None else total + a
                    n += 1
    mean = (total / n).astype(np.float32)
    np.save(path, mean)
    return mean
