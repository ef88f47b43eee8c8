"""Sharding throughput on real ImageNet-layout JPEGs, against plain PIL in the same run.

    python benchmarks/bench_sharding.py --root /work/shared/data/imagenette --workers 1 2 [--limit N] [--repeats R]

Baseline: one process, for each file PIL open + convert('RGB') + resize (smaller side to --size, bicubic)
+ center crop + JPEG encode (quality 90) to memory. Ours: ``write_shards`` of the same files, with each
worker count; "per core" divides by the number of workers. Files are read once first so both start from
a warm page cache; each measurement is repeated --repeats times, interleaved, and the best kept (other
processes on the machine only ever slow a run down). Each run also reports its CPU time (this process plus,
for a pool, its workers): on a busy machine wall time shows the load, CPU time what the work costs.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import tempfile
import time
from multiprocessing import forkserver
from pathlib import Path

from PIL import Image

from zf_pipeline.data.imagenet import read_imagenet
from zf_pipeline.data.preprocess import RESAMPLE
from zf_pipeline.data.records import ImageSet
from zf_pipeline.data.shards import DEFAULT_IMAGES_PER_SHARD, write_shards


def load_images(root: Path, limit: int | None) -> ImageSet:
    """Train and val of an ImageNet-layout folder as one shuffled 'train' split (the first ``limit`` by id)."""
    train, val = read_imagenet(root, "train"), read_imagenet(root, "val")
    records = sorted(train.records + val.records, key=lambda record: record.source)[:limit]
    return ImageSet(
        name="bench", root=root, split="train", classes=train.classes, class_names=train.class_names, records=records
    )


def baseline(paths: list[str], size: int, quality: int) -> tuple[float, float]:
    """(wall, CPU) seconds for plain PIL decode + resize + crop + encode of ``paths`` in this one process."""
    started, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), RESAMPLE)
        left, top = (width - size) // 2, (height - size) // 2
        image.crop((left, top, left + size, top + size)).save(io.BytesIO(), format="JPEG", quality=quality)
    return time.perf_counter() - started, time.process_time() - cpu


def pool_cpu() -> float:
    """CPU seconds of the pool workers that have exited so far (Linux): they are children of multiprocessing's
    forkserver, which reaps them, so they add up in its /proc stat fields cutime and cstime."""
    pid = forkserver._forkserver._forkserver_pid  # no public accessor; None until the first pool starts
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def ours(images: ImageSet, workers: int, size: int, quality: int, scratch: Path) -> tuple[float, float, dict]:
    """(wall, CPU) seconds for write_shards of ``images`` with ``workers`` processes, and its summary."""
    out = scratch / f"w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    started, cpu = time.perf_counter(), time.process_time() + pool_cpu()
    summary = write_shards(images, out, size=size, quality=quality, workers=workers, progress=False)
    return time.perf_counter() - started, time.process_time() + pool_cpu() - cpu, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="ImageNet-layout folder (train/<wnid>/, val/<wnid>/)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (by path)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    images = load_images(args.root, args.limit)
    paths = [record.source for record in images.records]
    warm_bytes = sum(len(Path(path).read_bytes()) for path in paths)
    cores, load = os.cpu_count(), os.getloadavg()[0]
    print(f"machine: {platform.machine()} {platform.processor()}, {cores} cores, load average {load:.1f}")
    print(f"images: {len(paths)} from {args.root} ({warm_bytes / 2**20:.0f} MiB), size {args.size}, q{args.quality}")

    base: list[tuple[float, float]] = []
    runs: dict[int, list[tuple[float, float]]] = {workers: [] for workers in args.workers}
    with tempfile.TemporaryDirectory(prefix="bench_sharding-") as scratch:
        for _ in range(args.repeats):
            base.append(baseline(paths, args.size, args.quality))
            for workers in args.workers:
                wall, cpu, summary = ours(images, workers, args.size, args.quality, Path(scratch))
                runs[workers].append((wall, cpu))
    sample = summary["shard_bytes"] / summary["images_written"]
    print(
        f"written {summary['images_written']}, skipped {summary['images_skipped']}, {sample / 1e3:.1f} kB per sample"
        f" -> {DEFAULT_IMAGES_PER_SHARD} images per shard ~ {sample * DEFAULT_IMAGES_PER_SHARD / 1e6:.0f} MB"
    )

    def rates(times: list[tuple[float, float]]) -> tuple[float, float]:
        return len(paths) / min(wall for wall, _ in times), len(paths) / min(cpu for _, cpu in times)

    base_wall, base_cpu = rates(base)
    one_wall = rates(runs[args.workers[0]])[0]
    header = f"{'img/s':>8}{'img/s/core':>12}{'vs base/core':>14}{'vs 1st':>8}{'CPU img/s':>11}{'vs base CPU':>13}"
    print(f"\n{'':28}{header}")
    print(f"{'PIL baseline, 1 process':28}{base_wall:8.0f}{base_wall:12.0f}{1:14.2f}{'':>8}{base_cpu:11.0f}{1:13.2f}")
    for workers, times in runs.items():
        wall, cpu = rates(times)
        per_core = wall / workers
        print(
            f"{f'write_shards, {workers} workers':28}{wall:8.0f}{per_core:12.0f}{per_core / base_wall:14.2f}"
            f"{wall / one_wall:8.2f}{cpu:11.0f}{cpu / base_cpu:13.2f}"
        )
    load = os.getloadavg()[0]
    print(f"(best of {args.repeats}; 'vs 1st': speed-up over the first worker count; load average now {load:.1f})")


if __name__ == "__main__":
    main()
