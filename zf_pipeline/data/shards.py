"""A split of images written as WebDataset shards, preprocessed as in the paper (see ``preprocess.py``).

The folder it writes, and how it is read back: ``shard_format.py``. Shards are byte-identical for the same
inputs and config whatever the number of workers: tar headers carry no time, owner or host, members are in
sorted order and the JPEG encoder settings are fixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import PIL
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import features
from tqdm import tqdm

from zf_pipeline.data.preprocess import (
    REDUCING_GAP,
    RESAMPLE,
    Preprocessing,
    UnusableImage,
    preprocess,
)
from zf_pipeline.data.records import ImageRecord, ImageSet, read_bytes
from zf_pipeline.data.shard_format import (
    FORMAT_VERSION,
    KEY_DIGITS,
    MANIFEST_SCHEMA,
    SKIPPED_SCHEMA,
    load_summary,
    shard_name,
)
from zf_pipeline.io import atomic_path, folder_lock, write_bytes_atomic
from zf_pipeline.workers import process_pool

logger = logging.getLogger(__name__)

# Imagenette's 256 px crops average 22 kB at quality 90 (docs/results/sharding.md); full-size ImageNet
# photos have more detail per pixel. 5,000 images make ~110-200 MB shards: 257 shards for ImageNet train,
# enough to spread over many GPUs x loader workers, few enough to stream without per-file overhead.
DEFAULT_IMAGES_PER_SHARD = 5000
WRITER_LOCK = ".writer"  # a folder inside the split folder; its .lock is held while shards are written


def split_order(images: ImageSet, seed: int) -> list[ImageRecord]:
    """The order samples are written in: the train split shuffled by ``seed``, every other split by image_id."""
    ordered = sorted(images.records, key=lambda record: record.image_id)
    if images.split == "train":
        # A local generator: the permutation depends on the seed only, not on global random state.
        permutation = np.random.default_rng(seed).permutation(len(ordered))
        ordered = [ordered[i] for i in permutation]
    return ordered


def _fingerprint(
    images: ImageSet, order: list[ImageRecord], preprocessing: Preprocessing, images_per_shard: int, seed: int
) -> dict:
    """Everything the shards' bytes depend on; a folder made with another fingerprint is redone."""
    digest = hashlib.sha256()
    digest.update(json.dumps([images.classes, images.class_names]).encode())
    for record in order:
        digest.update(
            json.dumps([record.image_id, record.source, record.label, record.class_id, list(record.labels)]).encode()
        )
    return {
        "format": FORMAT_VERSION,
        "dataset": images.name,
        "split": images.split,
        **asdict(preprocessing),
        "resample": RESAMPLE.name.lower(),
        "reducing_gap": REDUCING_GAP,
        "images_per_shard": images_per_shard,
        "seed": seed,
        "pillow": PIL.__version__,
        "libjpeg": features.version("jpg"),
        "records_sha256": digest.hexdigest(),
    }


def _process_source(source: str, preprocessing: Preprocessing) -> tuple[bytes | None, str]:
    """(JPEG bytes, '') for a usable image, (None, reason) otherwise."""
    try:
        data = read_bytes(source)
    except OSError as error:
        return None, f"unreadable: {type(error).__name__}: {error}"
    try:
        return preprocess(data, preprocessing), ""
    except UnusableImage as error:
        return None, error.reason


def _sample_members(key: str, record: ImageRecord, jpeg: bytes) -> list[tuple[str, bytes]]:
    meta = {
        "image_id": record.image_id,
        "label": record.label,
        "class_id": record.class_id,
        "source": record.source,
        "labels": list(record.labels),
    }
    return [
        (f"{key}.cls", str(record.label).encode("ascii")),
        (f"{key}.jpg", jpeg),
        (f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")),
    ]


def _tar_member(name: str, data: bytes) -> bytes:
    """One member as ``tarfile`` writes it (ustar header, data, zero padding to a block)."""
    # Fixed metadata: nothing about when, where or by whom the shard was written reaches its bytes.
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    return header + data + tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE)


def _tar_end(length: int) -> bytes:
    """What ``tarfile`` appends on close to ``length`` bytes of members: two zero blocks, then zeros to a record."""
    end = 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (end + (-(length + end) % tarfile.RECORDSIZE))


@dataclass(frozen=True)
class _Piece:
    """Consecutive samples of one shard, preprocessed and written as tar members by one worker."""

    shard: int
    start: int  # split position of records[0]
    records: tuple[ImageRecord, ...]
    path: Path  # '.<shard>.tmp-partNNNN': a temporary until the shard is assembled and renamed


def _write_piece(piece: _Piece, preprocessing: Preprocessing) -> tuple[_Piece, dict[int, str]]:
    """Worker: read, preprocess and write the samples of ``piece``; returns it with its skip reasons by position."""
    reasons = {}
    with open(piece.path, "wb") as f:
        for position, record in enumerate(piece.records, piece.start):
            jpeg, reason = _process_source(record.source, preprocessing)
            if jpeg is None:
                reasons[position] = reason
                continue
            for name, data in _sample_members(f"{position:0{KEY_DIGITS}d}", record, jpeg):
                f.write(_tar_member(name, data))
    return piece, reasons


def _plan(
    out: Path,
    names: list[str],
    shards: list[list[ImageRecord]],
    images_per_shard: int,
    pending: list[int],
    workers: int,
) -> list[_Piece]:
    """The pieces of the pending shards: whole shards, but the last ``workers`` of them cut in ``workers`` parts
    each, so every worker stays busy to the end, also when fewer shards than workers are left."""
    whole = len(pending) - workers if workers > 1 else len(pending)
    pieces = []
    for rank, index in enumerate(pending):
        records = shards[index]
        parts = 1 if rank < whole else min(workers, len(records))
        bounds = [len(records) * part // parts for part in range(parts + 1)]
        for part in range(parts):
            start = index * images_per_shard + bounds[part]
            chunk = tuple(records[bounds[part] : bounds[part + 1]])
            pieces.append(_Piece(index, start, chunk, out / f".{names[index]}.tmp-part{part:04d}"))
    return pieces


def _assemble(parts: list[Path], final: Path) -> None:
    """Append the other parts and the tar end to the first part, then rename it: the shard appears complete."""
    with open(parts[0], "ab") as f:
        for part in parts[1:]:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, f, 1 << 20)
            part.unlink()
        f.write(_tar_end(f.tell()))
    os.replace(parts[0], final)


def _shard_keys(path: Path) -> set[str]:
    """Keys of the samples in a finished shard (from the tar headers only)."""
    with tarfile.open(path, "r") as tar:
        return {name.split(".", 1)[0] for name in tar.getnames()}


def _clear(out: Path, split: str, keep_shards: bool) -> None:
    """Remove what a previous run left: temporaries always, finished outputs unless they can be resumed."""
    stale = [*out.glob(f".{split}-*.tar.tmp-*"), out / "summary.json"]
    if not keep_shards:
        stale += [*out.glob(f"{split}-*.tar"), out / "manifest.parquet", out / "skipped.parquet", out / "classes.json"]
    for path in stale:
        path.unlink(missing_ok=True)


def write_shards(
    images: ImageSet,
    out_dir: str | os.PathLike,
    *,
    size: int = 256,
    quality: int = 90,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write ``images`` to WebDataset shards in ``out_dir`` (the format in this module's docstring).

    Each image is resized (smaller side to ``size``), center-cropped to ``size`` x ``size`` and re-encoded as
    JPEG of ``quality``; unusable images are listed in skipped.parquet. ``workers`` processes (default: all
    cores) each read, preprocess and write whole shards; the last shards are cut in parts that the workers
    share, and this process joins the parts. A finished folder with the same config is returned as is; an
    interrupted one is resumed (finished shards kept, the rest redone); one made with another config is
    redone. A second call on the same folder waits for the first, then finds it finished. Returns the summary
    (also written to summary.json). The pool uses the forkserver start method, so a script that calls this
    with several workers needs the usual ``if __name__ == "__main__":`` guard.
    """
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    out = Path(out_dir)
    # Its own lock, not out/.lock: the asset layer holds that one around this call, and a second flock on
    # one file from one process waits forever.
    preprocessing = Preprocessing(size=size, quality=quality)
    workers = workers or os.cpu_count() or 1
    with folder_lock(out / WRITER_LOCK):
        return _write_locked(images, out, preprocessing, images_per_shard, seed, workers, progress)


def _write_locked(
    images: ImageSet,
    out: Path,
    preprocessing: Preprocessing,
    images_per_shard: int,
    seed: int,
    workers: int,
    progress: bool,
) -> dict:
    """``write_shards`` while holding the folder's writer lock."""
    split = images.split
    order = split_order(images, seed)
    config = _fingerprint(images, order, preprocessing, images_per_shard, seed)

    config_path = out / "config.json"
    same_config = config_path.exists() and json.loads(config_path.read_text()) == config
    if same_config and (out / "summary.json").exists():
        logger.info("%s: complete, same config; nothing to do", out)
        return load_summary(out)
    _clear(out, split, keep_shards=same_config)
    write_bytes_atomic(config_path, json.dumps(config, indent=2, sort_keys=True).encode())

    shards = [order[start : start + images_per_shard] for start in range(0, len(order), images_per_shard)]
    names = [shard_name(split, index) for index in range(len(shards))]
    finished = [(out / name).exists() for name in names]
    pending = [index for index, done in enumerate(finished) if not done]
    if any(finished):
        logger.info("%s: resuming, %d of %d shards already written", out, len(shards) - len(pending), len(shards))

    reasons: dict[int, str] = {}  # position -> why the image was skipped
    for index in (index for index, done in enumerate(finished) if done):
        keys = _shard_keys(out / names[index])
        start = index * images_per_shard
        for position, record in enumerate(shards[index], start):
            if f"{position:0{KEY_DIGITS}d}" not in keys:  # skipped in the interrupted run: recover its reason
                reasons[position] = _process_source(record.source, preprocessing)[1]

    pieces = _plan(out, names, shards, images_per_shard, pending, workers)
    parts: dict[int, list[Path]] = {}
    for piece in pieces:
        parts.setdefault(piece.shard, []).append(piece.path)
    waiting = {index: len(paths) for index, paths in parts.items()}
    total = sum(len(shards[index]) for index in pending)
    write = partial(_write_piece, preprocessing=preprocessing)
    workers = min(workers, len(pieces))
    started, done = time.perf_counter(), 0
    try:
        # forkserver: safe when the caller has threads (Dagster does); the preload saves each worker ~0.4 s of
        # CPU importing numpy, PIL and pyarrow. The pool ends before the cleanup below, so no worker still writes.
        pooled = process_pool(workers, preload=[__name__]) if workers > 1 else contextlib.nullcontext()
        with pooled as pool, tqdm(total=total, unit="img", desc=f"sharding {split}", disable=not progress) as bar:
            for piece, piece_reasons in pool.imap_unordered(write, pieces) if pool else map(write, pieces):
                reasons.update(piece_reasons)
                bar.update(len(piece.records))
                waiting[piece.shard] -= 1
                if waiting[piece.shard]:
                    continue
                _assemble(parts[piece.shard], out / names[piece.shard])
                done += len(shards[piece.shard])
                rate = done / (time.perf_counter() - started)
                name = names[piece.shard]
                logger.info("%s written (%d/%d images, %.0f images/s, %d workers)", name, done, total, rate, workers)
    finally:
        for path in out.glob(f".{split}-*.tar.tmp-*"):  # parts of a failed run (a finished one has none)
            path.unlink()

    return _write_tables(out, images, order, names, images_per_shard, reasons, config)


def _write_tables(
    out: Path,
    images: ImageSet,
    order: list[ImageRecord],
    names: list[str],
    images_per_shard: int,
    reasons: dict[int, str],
    config: dict,
) -> dict:
    """Manifest, skip list, classes and, last, the summary that marks the folder complete."""
    written = [(position, record) for position, record in enumerate(order) if position not in reasons]
    manifest = pa.table(
        {
            "image_id": [record.image_id for _, record in written],
            "source": [record.source for _, record in written],
            "split": [images.split] * len(written),
            "shard": [names[position // images_per_shard] for position, _ in written],
            "key": [f"{position:0{KEY_DIGITS}d}" for position, _ in written],
            "label": [record.label for _, record in written],
            "class_id": [record.class_id for _, record in written],
        },
        schema=MANIFEST_SCHEMA,
    )
    skipped = pa.table(
        {
            "image_id": [order[position].image_id for position in sorted(reasons)],
            "source": [order[position].source for position in sorted(reasons)],
            "reason": [reasons[position] for position in sorted(reasons)],
        },
        schema=SKIPPED_SCHEMA,
    )
    for name, table in (("manifest.parquet", manifest), ("skipped.parquet", skipped)):
        with atomic_path(out / name) as tmp:
            pq.write_table(table, tmp)
    classes = {"classes": images.classes, "class_names": images.class_names}
    write_bytes_atomic(out / "classes.json", json.dumps(classes, indent=2, ensure_ascii=False).encode("utf-8"))

    summary = {
        "split": images.split,
        "dataset": images.name,
        "images_in": len(order),
        "images_written": len(written),
        "images_skipped": len(reasons),
        "shards": names,
        "shard_bytes": sum((out / name).stat().st_size for name in names),
        "size": config["size"],
        "quality": config["quality"],
        "seed": config["seed"],
        "images_per_shard": images_per_shard,
        "classes": len(images.classes),
    }
    if summary["images_in"] != summary["images_written"] + summary["images_skipped"]:
        raise RuntimeError(f"{out}: {summary['images_in']} images in != written + skipped ({summary})")
    write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    logger.info(
        "%s: %d images written to %d shards, %d skipped",
        out,
        summary["images_written"],
        len(names),
        summary["images_skipped"],
    )
    return summary
