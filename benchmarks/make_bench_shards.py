"""A shard folder of N images for loader and training benchmarks, from any folder of class subfolders of JPEGs.

    python benchmarks/make_bench_shards.py --images DIR --n 25600 --out DIR [--size 256] [--workers 16]

Sources are cycled until there are ``--n`` records (a benchmark needs batches, not distinct images),
sharded by the library's own writer at ``--size`` px, and the per-pixel mean is written beside the
folder as ``pixel_mean.npy``. Prints one JSON line: images, shards, bytes, seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import cycle, islice
from pathlib import Path

from zf_pipeline.data.pixel_mean import compute_pixel_mean, save_pixel_mean
from zf_pipeline.data.records import ImageRecord, ImageSet
from zf_pipeline.data.shards import write_shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="a folder of <class>/<file>.jpg|JPEG")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args()
    files = sorted(f for f in Path(args.images).glob("*/*") if f.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"{args.images}: no <class>/<file>.jpg images")
    classes = sorted({f.parent.name for f in files})
    records = [ImageRecord(f"{f.parent.name}/{i:07d}", str(f), classes.index(f.parent.name), f.parent.name)
               for i, f in enumerate(islice(cycle(files), args.n))]
    t = time.perf_counter()
    summary = write_shards(ImageSet("bench", Path(args.images), "train", classes, classes, records), args.out,
                           size=args.size, images_per_shard=args.per_shard, workers=args.workers)
    save_pixel_mean(Path(args.out).parent / "pixel_mean.npy", compute_pixel_mean(args.out, workers=args.workers))
    print(json.dumps({"images": summary["images_written"], "shards": len(summary["shards"]),
                      "bytes": summary["shard_bytes"], "s": round(time.perf_counter() - t, 1)}))


if __name__ == "__main__":
    main()
