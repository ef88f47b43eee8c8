#!/bin/bash
# One epoch of the real trainer (python -m zf_pipeline.train) on the streaming loader over an ImageNet-size
# train folder, without the hours of generating and sharding 1.28M originals: N distinct images are sharded
# by the library, then a second folder lists those shards again under new names (hard links) until it holds
# SHARDS x 1,000 entries (1,282,000 by default, ImageNet's 1,281,167 rounded up to whole shards). Every entry
# is read and decoded again, so the loader does an ImageNet epoch's work; the page cache holds the distinct
# bytes, so disk reads are not tested (docs/results/scale.md).
#
#   bash benchmarks/epoch_at_scale.sh PHOTOS_DIR [trainer flags]   (PHOTOS_DIR: <class>/<file>.jpg; on a GPU machine)
set -euo pipefail
PHOTOS=$1 Z=${ZF_EPOCH_DIR:-/tmp/zfe} N=${N:-26000} SHARDS=${SHARDS:-1282} W=$(nproc)
export PYTHONPATH=$(cd "$(dirname "$0")/.." && pwd)
[ -f $Z/small/summary.json ] || python3 benchmarks/make_bench_shards.py --images "$PHOTOS" --n $N --out $Z/small \
    --per-shard 1000 --workers $W
python3 - "$Z" "$SHARDS" <<'PY'
import json, os, shutil, sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from pathlib import Path
z, count = Path(sys.argv[1]), int(sys.argv[2])
small, big = z / "small", z / "big"
summary = json.loads((small / "summary.json").read_text())
full = summary["shards"][: summary["images_written"] // 1000]  # whole 1,000-image shards only
shutil.rmtree(big, ignore_errors=True)
big.mkdir()
names = [f"train-{i:06d}.tar" for i in range(count)]
for i, name in enumerate(names):
    os.link(small / full[i % len(full)], big / name)
shutil.copy(small / "classes.json", big / "classes.json")
manifest = pq.read_table(small / "manifest.parquet")
parts = []
for i, name in enumerate(names):
    rows = manifest.filter(pc.equal(manifest["shard"], full[i % len(full)]))
    ids = pc.binary_join_element_wise(pa.scalar(name), rows["key"], "/")
    rows = rows.set_column(rows.schema.get_field_index("shard"), "shard", pa.array([name] * len(rows)))
    parts.append(rows.set_column(rows.schema.get_field_index("image_id"), "image_id", ids))
pq.write_table(pa.concat_tables(parts), big / "manifest.parquet")
summary.update(shards=names, images_in=1000 * count, images_written=1000 * count, images_skipped=0,
               shard_bytes=sum((big / n).stat().st_size for n in names))
(big / "summary.json").write_text(json.dumps(summary))
print(f"{big}: {len(names)} shards, {1000 * count} entries, {summary['shard_bytes'] / 1e9:.1f} GB listed")
PY
/usr/bin/time -v python3 -m zf_pipeline.train --shards $Z/big --val-shards $Z/small --mean $Z/pixel_mean.npy \
    --out $Z/run --epochs 1 --init kaiming --loader stream --workers $((W - 2)) --compile --no-final-train-error \
    --log-every 1000 --no-resume "${@:2}" 2>&1 | grep -v "^\s*\(Page size\|Signals\|Socket\|Swaps\|File system\|Average\|Exit\)"
