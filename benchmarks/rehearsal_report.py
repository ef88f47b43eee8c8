"""The full-size rehearsal's per-stage table (benchmarks/rehearsal.sh): wall time, images, img/s, peak GPU and
host memory, disk; and its part of docs/results/scale.json, written as ``results/rehearsal.json``.

    python benchmarks/rehearsal_report.py /tmp/zf
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path


def _records(z: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (z / "out" / "_records").glob("*.json")}


def steady_img_per_s(train_log: Path) -> float | None:
    """The median of the trainer's logged img/s over its first epoch, without the first entry (which holds
    torch.compile's warm-up): the rate the remaining epochs run at."""
    if not train_log.exists():
        return None
    rates = [float(m.group(1)) for m in re.finditer(r"epoch 1 step \d+/\d+ .* (\d+) img/s", train_log.read_text())]
    return statistics.median(rates[1:]) if len(rates) > 1 else None


def main(z: Path) -> None:
    stages = [line.split() for line in (z / "logs" / "stages.txt").read_text().splitlines()]
    samples = [[float(x) for x in line.split()] for line in (z / "logs" / "samples.txt").read_text().splitlines()
               if len(line.split()) == 4]
    records = _records(z)
    gen = {}
    gen_log = (z / "logs" / "generate.log")
    for line in gen_log.read_text().splitlines() if gen_log.exists() else []:
        if line.startswith("{"):
            gen = json.loads(line)
    train_images = records.get("imagenet_train_shards", {}).get("images_written")
    val_images = records.get("imagenet_val_shards", {}).get("images_written")
    images = {"generate": gen.get("images"), "shards": (train_images or 0) + (val_images or 0) or None,
              "train": train_images, "features": val_images}
    rows, out = [], {"train_images": train_images, "val_images": val_images, "unique_originals": gen.get("unique")}
    disk0 = samples[0][3] if samples else float("nan")
    for name, t0, t1, *failed in stages:
        t0, t1 = float(t0), float(t1)
        window = [s for s in samples if t0 <= s[0] <= t1] or [[0, float("nan")] * 2]
        wall = t1 - t0
        n = images.get(name)
        rows.append(
            (
                name + (" (failed)" if failed else ""),
                wall,
                n,
                n / wall if n else None,
                max(s[1] for s in window) / 1024,
                max(s[2] for s in window) / 1024,
                (window[-1][3] - disk0) / 1024,
            )
        )
        out[f"{name}_s"] = round(wall, 1)
    steady = steady_img_per_s(z / "logs" / "train.log")
    if steady:
        out["epoch_steady_img_per_s"] = round(steady)
    runs = sorted((z / "out" / "train").glob("*/metrics.jsonl"))
    if runs:
        metrics = [json.loads(line) for line in runs[-1].read_text().splitlines()]
        first = metrics[0]
        out.update(epoch_s=round(first["epoch_s"], 1), epoch_img_per_s=round(first["img_per_s"]))
        # Epoch 1 carries torch.compile; the other 69 run at the steady rate, each plus its validation pass.
        later = train_images / steady + first["wall_s"] - first["epoch_s"] if steady and train_images else None
        out["projected_70_epochs_h"] = round((first["wall_s"] + 69 * (later or first["wall_s"])) / 3600, 2)
    # Each asset's own build time (its cache record), beside the stage's wall time (which adds Dagster's start).
    out["asset_s"] = {name: r["seconds"] for name, r in records.items() if "seconds" in r}
    sharding = z / "results" / "bench_sharding.json"
    if sharding.exists() and "imagenet_train_shards" in out["asset_s"]:
        bench = json.loads(sharding.read_text())
        pil_1 = bench["sets"]["imagenet-like"]["pil_1_img_s"]
        rate = train_images / out["asset_s"]["imagenet_train_shards"]
        out.update(shard_per_core=bench["shard_per_core"], train_shards_img_per_s=round(rate),
                   train_shards_per_core_vs_pil_1=round(rate / bench["cores"] / pil_1, 3))
    bench = z / "results" / "bench_train_imagenet.json"
    if bench.exists():
        table = json.loads(bench.read_text())
        ceiling = next(r["img_per_s"] for r in table if r["source"].startswith("synthetic"))
        out["ceiling_img_per_s"] = round(ceiling)
        for key in ("epoch", "epoch_steady"):
            if f"{key}_img_per_s" in out:
                out[f"{key}_of_ceiling"] = round(out[f"{key}_img_per_s"] / ceiling, 3)
    (z / "results" / "rehearsal.json").write_text(json.dumps(out, indent=1))
    print("| stage | wall s | images | img/s | peak GPU GiB | peak host GiB | disk GiB added (end) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, wall, n, rate, gpu, host, disk in rows:
        print(
            f"| {name} | {wall:.0f} | {n or ''} | {f'{rate:,.0f}' if rate else ''} "
            f"| {gpu:.1f} | {host:.1f} | {disk:.1f} |"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
