"""An ImageNet-size data set for load tests: the ILSVRC-2012 folder layout, filled with new JPEGs cut from real photos.

    PYTHONPATH=. python3 benchmarks/make_imagenet_like.py --out /data/imagenet_like \
        --sources /work/shared/data/imagenette /work/shared/data/caltech101 \
        --train 1281167 --val 50000 --unique 100000

Writes ``train/<wnid>/<wnid>_<n>.JPEG`` (train entry i in class i mod C, the n-th of its class) and
``val/<wnid>/ILSVRC2012_val_<i + 1, 8 digits>.JPEG``, over the 1,000 ILSVRC-2012 synsets (or the first
--classes of them). Each image is a random crop (35-100% of a source photo's area, aspect 3:4 to 4:3) of a
photo under --sources, resized to 375-500 px a side (landscape three times in four), maybe mirrored,
colour-jittered (brightness, contrast, saturation 0.7-1.3), given grain, and saved as JPEG quality 90: about
78 kB a file (ImageNet's average is about 110 kB). The labels mean nothing: it is a load test.

With --unique K only train entries 0..K-1 (and every val entry) are encoded; train entry i >= K is a hard
link to entry i mod K, so 1,281,167 entries take about K files of disk (plus the links' directory entries).
Entry i depends only on --seed, its split and i: any --workers gives the same bytes. Every file is written
under a temporary name and renamed, and existing files are kept, so a killed run resumes (its temporaries
are hidden files, which the ImageNet reader skips). Contiguous ranges of entries go to a pool of --workers
processes (default: every core). Needs only python3 with numpy and Pillow, and this repository on PYTHONPATH.
Logs progress with images/s to stderr; prints a one-line JSON summary last (bytes: of the distinct files).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from zf_pipeline.data.imagenet import BUILTIN_SYNSETS
from zf_pipeline.io import atomic_path, write_bytes_atomic
from zf_pipeline.workers import process_pool

log = logging.getLogger("make_imagenet_like")

SPLITS = {"train": 0, "val": 1}  # part of each entry's random seed, so train and val images differ
SIDES = (375, 500)  # each side of an output image, inclusive
GRAIN = (8.0, 16.0)  # grain standard deviation, 0-255 levels: ~78 kB a file (ImageNet: ~110 kB), 256 px crops ~22 kB
CHUNK = 256  # entries per task: small enough for even load and frequent progress lines
SOURCE_SUFFIXES = (".jpg", ".jpeg")


def entry_path(root: Path, split: str, wnids: list[str], i: int) -> Path:
    """Where entry ``i`` of ``split`` lies: class i mod C, and its number within that class."""
    wnid = wnids[i % len(wnids)]
    name = f"{wnid}_{i // len(wnids)}.JPEG" if split == "train" else f"ILSVRC2012_val_{i + 1:08d}.JPEG"
    return root / split / wnid / name


@functools.cache
def grain(seed: int) -> np.ndarray:
    """A tile of unit Gaussian noise that every image takes a window of (cheaper than fresh noise per image)."""
    return np.random.default_rng([seed, len(SPLITS)]).standard_normal((2 * SIDES[1], 2 * SIDES[1], 3), np.float32)


def make_image(source: Path, rng: np.random.Generator, noise: np.ndarray, quality: int) -> bytes:
    """One new JPEG from a source photo: random crop, size, mirror, colour jitter and grain."""
    photo = Image.open(source).convert("RGB")
    width, height = (int(side) for side in rng.integers(SIDES[0], SIDES[1] + 1, size=2))
    if (width < height) == (rng.random() < 0.75):  # landscape three times in four
        width, height = height, width
    # The crop: a share of the photo's area with about the output's aspect (RandomResizedCrop's recipe).
    area = photo.width * photo.height * rng.uniform(0.35, 1.0)
    aspect = width / height * np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = min(photo.width, np.sqrt(area * aspect))
    crop_h = min(photo.height, np.sqrt(area / aspect))
    left, top = rng.uniform(0, photo.width - crop_w), rng.uniform(0, photo.height - crop_h)
    image = photo.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Colour jitter, brightness * (mean + contrast * (grey + saturation * (x - grey) - mean)), as a x + b grey + c.
    brightness, contrast, saturation = rng.uniform(0.7, 1.3, size=3)
    grey = np.asarray(image.convert("L"), dtype=np.float32)[..., None]
    mean = float(grey.mean())
    pixels = np.asarray(image, dtype=np.float32) * (brightness * contrast * saturation)
    pixels += grey * (brightness * contrast * (1 - saturation))
    pixels += brightness * mean * (1 - contrast) + 0.5
    # Grain: upscaled photos are smoother than camera originals; noise brings JPEG sizes near ImageNet's.
    row, column = rng.integers(0, noise.shape[0] - height + 1), rng.integers(0, noise.shape[1] - width + 1)
    pixels += noise[row : row + height, column : column + width] * rng.uniform(*GRAIN)
    np.clip(pixels, 0, 255, out=pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class Plan:
    """What to write: the output root, the classes, the sources and how many entries of each kind."""

    def __init__(self, args: argparse.Namespace):
        self.root = args.out
        synsets = [line.split("\t", 1)[0] for line in BUILTIN_SYNSETS.read_text().splitlines()]
        self.wnids = synsets[: args.classes]
        self.sources = sorted(
            path for folder in args.sources for path in folder.rglob("*") if path.suffix.lower() in SOURCE_SUFFIXES
        )
        if not self.sources:
            raise SystemExit(f"no JPEG (*.jpg, *.jpeg) under --sources {' '.join(map(str, args.sources))}")
        self.train, self.val, self.seed, self.quality = args.train, args.val, args.seed, args.quality
        self.unique = min(args.unique or args.train, args.train)


def write_range(plan: Plan, split: str, start: int, stop: int) -> dict[str, int]:
    """Worker: entries [start, stop) of ``split``; those that exist are kept. Returns counts and bytes encoded."""
    counts = {"encoded": 0, "linked": 0, "existing": 0, "bytes": 0}
    for i in range(start, stop):
        path = entry_path(plan.root, split, plan.wnids, i)
        linked = split == "train" and i >= plan.unique
        if path.exists():
            counts["existing"] += 1
            counts["bytes"] += 0 if linked else path.stat().st_size
        elif linked:
            with atomic_path(path) as tmp:
                os.link(entry_path(plan.root, split, plan.wnids, i % plan.unique), tmp)
            counts["linked"] += 1
        else:
            rng = np.random.default_rng([plan.seed, SPLITS[split], i])
            data = make_image(plan.sources[rng.integers(len(plan.sources))], rng, grain(plan.seed), plan.quality)
            write_bytes_atomic(path, data)
            counts["encoded"] += 1
            counts["bytes"] += len(data)
    return counts


_worker_plan: Plan | None = None  # a worker process's copy, set once by the pool's initializer


def _init_worker(plan: Plan) -> None:
    global _worker_plan
    _worker_plan = plan


def _run_task(task: tuple[str, int, int]) -> tuple[int, dict[str, int]]:
    return task[2] - task[1], write_range(_worker_plan, *task)


def _ranges(split: str, start: int, stop: int) -> list[tuple[str, int, int]]:
    return [(split, first, min(first + CHUNK, stop)) for first in range(start, stop, CHUNK)]


def tasks(plan: Plan) -> list[list[tuple[str, int, int]]]:
    """Two phases of contiguous ranges: every encoded entry, then the hard links (their targets exist by then)."""
    return [_ranges("train", 0, plan.unique) + _ranges("val", 0, plan.val), _ranges("train", plan.unique, plan.train)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the ImageNet-layout root to write (train/, val/)")
    parser.add_argument("--sources", type=Path, nargs="+", required=True, help="folders of source photos (JPEG)")
    parser.add_argument("--train", type=int, default=1_281_167, help="train entries (ILSVRC-2012: 1,281,167)")
    parser.add_argument("--val", type=int, default=50_000, help="val entries (ILSVRC-2012: 50,000)")
    parser.add_argument("--unique", type=int, default=None, help="encode only this many train entries, link the rest")
    parser.add_argument("--classes", type=int, default=1000, help="use the first N ILSVRC-2012 synsets (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if min(args.train, args.val) < 0 or min(args.workers, args.unique or 1) < 1:
        parser.error(f"expected --train, --val >= 0 and --workers, --unique >= 1, got {vars(args)}")
    if not 1 <= args.classes <= 1000:
        parser.error(f"--classes must be 1-1000 (the ILSVRC-2012 synsets), got {args.classes}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    plan = Plan(args)
    for split in SPLITS:
        for wnid in plan.wnids:  # every class folder, even one left empty, so train lists all C classes
            (plan.root / split / wnid).mkdir(parents=True, exist_ok=True)
    log.info(
        "%d train (%d encoded, the rest linked) + %d val entries in %d classes from %d source photos, %d workers",
        plan.train, plan.unique, plan.val, len(plan.wnids), len(plan.sources), args.workers,
    )
    total = {"encoded": 0, "linked": 0, "existing": 0, "bytes": 0}
    started, done, entries, last_log = time.perf_counter(), 0, plan.train + plan.val, 0.0
    with process_pool(args.workers, initializer=_init_worker, initargs=(plan,)) as pool:
        for phase in tasks(plan):
            for count, counts in pool.imap_unordered(_run_task, phase):
                done += count
                total = {key: total[key] + counts[key] for key in total}
                elapsed = time.perf_counter() - started
                if elapsed - last_log >= 10 or done == entries:
                    last_log = elapsed
                    log.info(
                        "%d/%d entries (%d encoded, %d linked, %d existed), %.0f images/s encoded, %.0f entries/s",
                        done, entries, total["encoded"], total["linked"], total["existing"],
                        total["encoded"] / elapsed, done / elapsed,
                    )
    seconds = time.perf_counter() - started
    summary = {"images": entries, "train": plan.train, "val": plan.val, "unique": plan.unique + plan.val, **total}
    print(json.dumps({**summary, "s": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
