"""Sharding throughput per core, against plain PIL in the same run, on 224 px files and on ImageNet-size originals.

    PYTHONPATH=. python3 benchmarks/bench_sharding.py --root /work/shared/data/imagenette \
        --sources /work/shared/data/imagenette /work/shared/data/caltech101 --workers 1 2 4 8 16 --json shard.json

Two sets of images: '224px', the files of the ImageNet-layout folder --root (Imagenette's are 224x224), and
'imagenet-like', --like originals of 375-500 px a side at quality 90 that make_imagenet_like.py writes from
the photos under --sources into a scratch folder (the size of ImageNet's originals; below 512 px a side PIL's
``draft`` cannot decode them at a reduced scale, so they cost about what most ImageNet files cost).
For every set and worker count W, W x --per-worker images (the files in turn, so every run has the same work
per core) go through:
- plain PIL in W processes, each on its share: open + convert('RGB') + resize of the smaller side to --size
  (bicubic) + center crop + JPEG encode (quality 90) to memory. Its W = 1 rate is the baseline of issue 15:
  'per core' = write_shards img/s / W / that rate. 'vs PIL xW' compares with W plain PIL processes instead:
  what the machine's cores give at that count (shared caches, clock), with no sharding work at all;
- ``write_shards`` with W workers, into a scratch folder.
Both sides' times include starting their process pool.
Files are read once first (warm page cache); each measurement is repeated --repeats times, interleaved, and
the best kept. CPU img/s counts this process and its pool workers (on a busy machine it shows what the work
costs while wall time shows the load). --json writes every figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import forkserver, get_context
from pathlib import Path

from PIL import Image

from zf_pipeline.data.imagenet import read_imagenet
from zf_pipeline.data.preprocess import RESAMPLE
from zf_pipeline.data.records import ImageRecord, ImageSet
from zf_pipeline.data.shards import write_shards
from zf_pipeline.workers import process_pool


def files_of(root: Path) -> tuple[list[str], list[str]]:
    """(image paths, classes) of train + val of an ImageNet-layout folder, sorted by path."""
    train, val = read_imagenet(root, "train"), read_imagenet(root, "val")
    return sorted(record.source for record in train.records + val.records), train.classes


def cycled(paths: list[str], classes: list[str], count: int) -> ImageSet:
    """``count`` records over ``paths`` in turn, as one 'train' split (a file may appear several times)."""
    records = [
        ImageRecord(f"{i:08d}", paths[i % len(paths)], i % len(classes), classes[i % len(classes)])
        for i in range(count)
    ]
    return ImageSet("bench", Path(paths[0]).parent, "train", classes, classes, records)


def pil(paths: list[str], size: int, quality: int) -> float:
    """The baseline's work on ``paths``: plain PIL decode, resize, crop and encode; returns its CPU seconds."""
    cpu = time.process_time()
    for path in paths:
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), RESAMPLE)
        left, top = (width - size) // 2, (height - size) // 2
        image.crop((left, top, left + size, top + size)).save(io.BytesIO(), format="JPEG", quality=quality)
    return time.process_time() - cpu


def pool_cpu() -> float:
    """CPU seconds of the pool workers that have exited so far (Linux): they are children of multiprocessing's
    forkserver, which reaps them, so they add up in its /proc stat fields cutime and cstime."""
    pid = forkserver._forkserver._forkserver_pid  # no public accessor; None until the first pool starts
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def pil_processes(images: ImageSet, workers: int, size: int, quality: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the baseline's work on ``images`` split over ``workers`` processes (pool start in)."""
    paths = [record.source for record in images.records]
    bounds = [len(paths) * k // workers for k in range(workers + 1)]
    shares = [(paths[bounds[k] : bounds[k + 1]], size, quality) for k in range(workers)]
    started = time.perf_counter()
    if workers == 1:
        cpu = pil(*shares[0])
    else:
        with process_pool(workers) as pool:
            cpu = sum(pool.starmap(pil, shares))
    return time.perf_counter() - started, cpu


def shards(images: ImageSet, workers: int, size: int, quality: int, per_shard: int, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of write_shards of ``images`` with ``workers`` processes into a fresh ``out``; CPU
    counts this process and the pool workers (write_shards waits for them to exit)."""
    shutil.rmtree(out, ignore_errors=True)
    options = dict(size=size, quality=quality, images_per_shard=per_shard, workers=workers, progress=False)
    started, cpu = time.perf_counter(), time.process_time() + pool_cpu()
    write_shards(images, out, **options)
    return time.perf_counter() - started, time.process_time() + pool_cpu() - cpu


def make_like(sources: list[Path], count: int, out: Path) -> list[str]:
    """``count`` ImageNet-size originals from ``sources`` (make_imagenet_like.py, all cores), their paths."""
    script = Path(__file__).with_name("make_imagenet_like.py")
    command = [sys.executable, str(script), "--out", str(out), "--sources", *map(str, sources)]
    command += ["--train", str(count), "--val", "0", "--classes", "100"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return sorted(str(path) for path in (out / "train").rglob("*.JPEG"))


def measure(name: str, paths: list[str], classes: list[str], args: argparse.Namespace, scratch: Path) -> dict:
    """Every worker count on one set of files; prints its table and returns its figures."""
    warm = sum(len(Path(path).read_bytes()) for path in paths)
    sides = [Image.open(path).size for path in paths[:: max(1, len(paths) // 200)]]
    mean_side = [sum(side[axis] for side in sides) / len(sides) for axis in (0, 1)]
    print(f"\n{name}: {len(paths)} files, {warm / len(paths) / 1e3:.0f} kB and {mean_side[0]:.0f}x{mean_side[1]:.0f}"
          f" on average, {args.per_worker} images per worker, {args.images_per_shard} per shard")
    best: dict[int, dict[str, tuple[float, float]]] = {w: {} for w in args.workers}
    for _ in range(args.repeats):
        for workers in args.workers:
            images = cycled(paths, classes, args.per_worker * workers)
            runs = {
                "pil": pil_processes(images, workers, args.size, args.quality),
                "ours": shards(images, workers, args.size, args.quality, args.images_per_shard, scratch / "out"),
            }
            for key, (wall, cpu) in runs.items():
                old = best[workers].get(key, (float("inf"), float("inf")))
                best[workers][key] = (min(old[0], wall), min(old[1], cpu))

    def rate(workers: int, key: str, column: int) -> float:
        return args.per_worker * workers / best[workers][key][column]

    base = rate(1, "pil", 0)
    result = {"files": len(paths), "kB_per_file": round(warm / len(paths) / 1e3, 1), "pil_1_img_s": base, "runs": {}}
    header = f"{'img/s':>8}{'per core':>10}{'per core vs PIL x1':>20}{'vs PIL xW':>11}{'CPU img/s':>11}"
    print(f"{'':28}{header}")
    for workers in args.workers:
        pil_rate, ours = rate(workers, "pil", 0), rate(workers, "ours", 0)
        per_core = ours / workers / base
        result["runs"][str(workers)] = {
            "images": args.per_worker * workers,
            "pil_img_s": round(pil_rate, 1),
            "write_shards_img_s": round(ours, 1),
            "per_core_vs_pil_1": round(per_core, 3),
            "vs_pil_w": round(ours / pil_rate, 3),
            "pil_cpu_img_s": round(rate(workers, "pil", 1), 1),
            "write_shards_cpu_img_s": round(rate(workers, "ours", 1), 1),
        }
        print(f"{f'PIL, {workers} processes':28}{pil_rate:8.0f}{pil_rate / workers:10.0f}"
              f"{pil_rate / workers / base:20.2f}{1:11.2f}{rate(workers, 'pil', 1):11.0f}")
        print(f"{f'write_shards, {workers} workers':28}{ours:8.0f}{ours / workers:10.0f}{per_core:20.2f}"
              f"{ours / pil_rate:11.2f}{rate(workers, 'ours', 1):11.0f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="ImageNet-layout folder of small files (train/<wnid>/, val/<wnid>/)")
    parser.add_argument("--sources", type=Path, nargs="*", default=[], help="photo folders for the imagenet-like set")
    parser.add_argument("--like", type=int, default=2000, help="how many imagenet-like originals to generate")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1], help="1 and others")
    parser.add_argument("--per-worker", type=int, default=2000, help="images per worker in each run")
    parser.add_argument("--images-per-shard", type=int, default=250)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not args.root and not args.sources:
        parser.error("give --root (224 px files), --sources (photos for the imagenet-like set), or both")
    if 1 not in args.workers:
        parser.error(f"--workers must include 1 (the per-core baseline), got {args.workers}")

    # As write_shards asks, before any pool starts the forkserver: workers of both sides start with it loaded.
    get_context("forkserver").set_forkserver_preload(["zf_pipeline.data.shards"])
    cores, load = os.cpu_count(), os.getloadavg()[0]
    print(f"machine: {platform.machine()} {platform.processor()}, {cores} cores, load average {load:.1f}")
    report = {"machine": platform.machine(), "cores": cores, "load_before": load, "args": vars(args), "sets": {}}
    with tempfile.TemporaryDirectory(prefix="bench_sharding-") as scratch:
        scratch = Path(scratch)
        if args.root:
            report["sets"]["224px"] = measure("224px", *files_of(args.root), args, scratch)
        if args.sources:
            started = time.perf_counter()
            paths = make_like(args.sources, args.like, scratch / "like")
            print(f"\ngenerated {len(paths)} imagenet-like originals in {time.perf_counter() - started:.1f} s")
            report["sets"]["imagenet-like"] = measure("imagenet-like", paths, ["like"], args, scratch)
    report["load_after"] = os.getloadavg()[0]
    # Issue 15's figure (docs/results/scale.json): per core vs 1-process PIL, on ImageNet-size files when measured.
    headline = report["sets"].get("imagenet-like") or report["sets"]["224px"]
    report["shard_per_core"] = {workers: run["per_core_vs_pil_1"] for workers, run in headline["runs"].items()}
    print(f"\n(best of {args.repeats}; load average now {report['load_after']:.1f})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
