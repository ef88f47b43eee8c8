"""Benchmark: top-9 mining over an ImageNet-train-sized activations table, on this machine's CPUs.

Generates 1.28M images x 1,376 maps (Krizhevsky's conv1-5: 96+256+384+384+256 maps of
55/27/13/13/13 px), 1.76 billion rows, with the writer settings of zf_pipeline.features, then
times, in the same run and on the same files:

- baseline: DuckDB's own ``max_by(image_id, value, 9) ... GROUP BY layer, channel``
- the same aggregate one layer at a time (``GROUP BY channel``), the access pattern ours uses
- ours:     ``zf_pipeline.mining.mine_top9`` (ties by image_id, with label, value, y, x, rank)
- with --alternatives, the exact one-query forms: ``min_by(struct, {-value, image_id}, 9)`` and
  ``row_number() OVER (...) QUALIFY rank <= 9``

and reports bytes per row. Values are ReLU maxima: per-map log-normal scales times
(0.5 + Exp(1)), a per-map share (0-30 %) of all-zero maps (value 0 at (0, 0)), rounded to float16
(which makes ties); positions uniform in the layer's map.

    python benchmarks/bench_mining.py                 # full size, 4.8 GB under /tmp, deleted after
    python benchmarks/bench_mining.py --scale 0.01    # 1% of the images
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from zf_pipeline.features import (
    ACTIVATION_ROW_GROUP_ROWS,
    ACTIVATION_SCHEMA,
    ACTIVATION_WRITE_OPTIONS,
    activation_table,
)
from zf_pipeline.mining import configure, mine_top9
from zf_pipeline.workers import process_pool

# Krizhevsky's conv layers: (maps, map side) at 224 px input.
LAYERS = {"conv1": (96, 55), "conv2": (256, 27), "conv3": (384, 13), "conv4": (384, 13), "conv5": (256, 13)}
IMAGES = 1_281_167
CLASSES = 1000
FILE_GROUPS = 32  # row groups per generated file


def image_ids(start: int, stop: int) -> tuple[list[str], np.ndarray]:
    """ImageNet-like ids ('n00000417/n00000417_001234') and labels for images start..stop-1."""
    labels = np.arange(start, stop) % CLASSES
    return [f"n{c:08d}/n{c:08d}_{i:07d}" for i, c in zip(range(start, stop), labels)], labels


def write_part(job: tuple[Path, str, int, int, int]) -> int:
    """Write images [start, stop) of one layer as one part file; return its size in bytes."""
    path, layer, start, stop, seed = job
    channels, side = LAYERS[layer]
    rng = np.random.default_rng(seed)
    layer_rng = np.random.default_rng(list(LAYERS).index(layer))  # per-map parameters, equal in every part
    scale = layer_rng.lognormal(1.0, 0.6, channels).astype(np.float32)
    zero_share = layer_rng.uniform(0.0, 0.3, channels).astype(np.float32)
    group = ACTIVATION_ROW_GROUP_ROWS // channels
    with pq.ParquetWriter(path, ACTIVATION_SCHEMA, **ACTIVATION_WRITE_OPTIONS) as writer:
        for a in range(start, stop, group):
            b = min(stop, a + group)
            ids, labels = image_ids(a, b)
            value = (scale * (0.5 + rng.standard_exponential((b - a, channels), dtype=np.float32))).astype(np.float16)
            dead = rng.random((b - a, channels), dtype=np.float32) < zero_share
            value[dead] = 0
            pos = rng.integers(0, side * side, (b - a, channels), dtype=np.int16)
            pos[dead] = 0
            table = activation_table(ids, labels, value, pos // side, pos % side)
            writer.write_table(table, row_group_size=table.num_rows)
    return path.stat().st_size


def generate(root: Path, images: int, workers: int) -> dict[str, int]:
    """The activations table under root/layer=*/; returns bytes per layer."""
    jobs = []
    for layer, (channels, _) in LAYERS.items():
        (root / f"layer={layer}").mkdir(parents=True)
        per_file = (ACTIVATION_ROW_GROUP_ROWS // channels) * FILE_GROUPS
        for part, start in enumerate(range(0, images, per_file)):
            jobs.append(
                (
                    root / f"layer={layer}" / f"part-{part:05d}.parquet",
                    layer,
                    start,
                    min(images, start + per_file),
                    len(jobs),
                )
            )
    sizes: dict[str, int] = dict.fromkeys(LAYERS, 0)
    with process_pool(workers, "fork") as pool:
        for (path, layer, *_), size in zip(jobs, pool.imap(write_part, jobs)):
            sizes[layer] += size
    return sizes


BASELINE_SQL = (
    "SELECT layer, channel, max_by(image_id, value, 9) FROM read_parquet($files, hive_partitioning = true) GROUP BY ALL"
)
# The same aggregate one layer at a time (GROUP BY channel only), the form zf_pipeline.mining uses.
BASELINE_PER_LAYER_SQL = "SELECT channel, max_by(image_id, value, 9) FROM read_parquet($files) GROUP BY channel"
# Exact in one query, but the struct key and argument cost about 4x the baseline.
STRUCT_SQL = """
SELECT layer, channel, min_by({'image_id': image_id, 'label': label, 'value': value, 'y': y, 'x': x},
                              {'v': -value, 'id': image_id}, 9) AS top
FROM read_parquet($files, hive_partitioning = true) GROUP BY ALL
"""
WINDOW_SQL = """
SELECT layer, channel, row_number() OVER w AS rank, image_id, label, value, y, x
FROM read_parquet($files, hive_partitioning = true)
WINDOW w AS (PARTITION BY layer, channel ORDER BY value DESC, image_id)
QUALIFY rank <= 9
"""


def best_of(repeat: int, run) -> tuple[float, int]:
    """Best wall time of ``repeat`` calls of run() -> result rows."""
    best, rows = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        rows = run()
        best = min(best, time.perf_counter() - t)
    return best, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 1,281,167 images (default 1)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per query (best is reported)")
    ap.add_argument(
        "--alternatives", action="store_true", help="also time the exact one-query forms (struct min_by, window)"
    )
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to generate (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()

    images = max(9, round(IMAGES * args.scale))
    root = Path(tempfile.mkdtemp(prefix="zf-bench-mining-", dir=args.dir)) / "activations"
    try:
        t = time.perf_counter()
        sizes = generate(root, images, args.threads)
        gen_s = time.perf_counter() - t
        maps = sum(c for c, _ in LAYERS.values())
        rows = images * maps
        print(
            f"generated {images:,} images x {maps:,} maps = {rows:,} rows in {gen_s:.1f} s "
            f"({rows / gen_s / 1e6:.0f} M rows/s) at {root}"
        )
        print("\n| layer | maps | map | rows | MB | bytes/row |\n| --- | --- | --- | --- | --- | --- |")
        for layer, (channels, side) in LAYERS.items():
            n = images * channels
            print(
                f"| {layer} | {channels} | {side}x{side} | {n:,} | {sizes[layer] / 1e6:,.0f} | {sizes[layer] / n:.3f} |"
            )
        total = sum(sizes.values())
        print(f"| all | {maps} | | {rows:,} | {total / 1e6:,.0f} | {total / rows:.3f} |")

        con = duckdb.connect()
        configure(con, args.threads)
        files = str(root / "layer=*" / "*.parquet")

        def sql(query: str, per_layer: bool = False):
            globs = [str(root / f"layer={layer}" / "*.parquet") for layer in LAYERS] if per_layer else [files]
            return lambda: sum(len(con.execute(query, {"files": f}).fetchall()) for f in globs)

        runs = {
            "baseline: max_by(image_id, value, 9) GROUP BY layer, channel": sql(BASELINE_SQL),
            "max_by(image_id, value, 9) per layer, GROUP BY channel": sql(BASELINE_PER_LAYER_SQL, per_layer=True),
            "ours: zf_pipeline.mining.mine_top9 (ties, label, value, y, x, rank)": lambda: mine_top9(
                root, root.parent / "top9.parquet", threads=args.threads
            ),
        }
        if args.alternatives:
            runs["one query: min_by(struct, {-value, image_id}, 9)"] = sql(STRUCT_SQL)
            runs["one query: row_number() OVER (...) QUALIFY"] = sql(WINDOW_SQL)
        print(f"\n{args.threads} DuckDB threads, duckdb {duckdb.__version__}, best of {args.repeat}\n")
        print("| query | s | M rows/s | result rows | speed vs baseline |\n| --- | --- | --- | --- | --- |")
        base = None
        for name, run in runs.items():
            s, n = best_of(args.repeat, run)
            base = base or s
            print(f"| {name} | {s:.2f} | {rows / s / 1e6:,.0f} | {n:,} | {base / s:.2f} |", flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root.parent)


if __name__ == "__main__":
    main()
