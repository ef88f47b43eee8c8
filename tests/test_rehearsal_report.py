"""benchmarks/rehearsal_report.py: the full-size rehearsal's per-stage table and its scale.json part, from the
logs, records and benchmark JSONs the rehearsal leaves (its CLI, on a hand-made run folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "rehearsal_report.py"


def write_run(z: Path) -> None:
    (z / "logs").mkdir(parents=True)
    (z / "results").mkdir()
    (z / "out" / "_records").mkdir(parents=True)
    (z / "out" / "train" / "abc").mkdir(parents=True)
    (z / "logs" / "stages.txt").write_text("shards 100.0 200.0\ntrain 200.0 300.0 failed\n")
    # time, GPU MiB, host MiB, disk MiB
    (z / "logs" / "samples.txt").write_text("100 0 1024 1000\n150 0 2048 3048\n250 4096 8192 3048\n300 0 1024 4072\n")
    # The first logged rate holds the compile warm-up; the steady rate is the median of the rest.
    rates = [500, 9000, 10000, 11000]
    (z / "logs" / "train.log").write_text("".join(
        f"INFO - zfnet_model - epoch 1 step {100 * (i + 1)}/1000 loss 6.9 lr 1.00e-02 {r} img/s\n"
        for i, r in enumerate(rates)))
    records = {"imagenet_train_shards": {"images_written": 100000, "seconds": 50.0},
               "imagenet_val_shards": {"images_written": 5000, "seconds": 5.0}, "zfnet_model": {"seconds": 90.0}}
    for name, record in records.items():
        (z / "out" / "_records" / f"{name}.json").write_text(json.dumps(record))
    (z / "out" / "train" / "abc" / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "epoch_s": 20.0, "wall_s": 22.0, "img_per_s": 5000.0}) + "\n")
    (z / "results" / "bench_train_imagenet.json").write_text(json.dumps(
        [{"arch": "ours", "source": "synthetic (ceiling)", "img_per_s": 20000.0}]))
    (z / "results" / "bench_sharding.json").write_text(json.dumps(
        {"cores": 16, "sets": {"imagenet-like": {"pil_1_img_s": 250.0}}, "shard_per_core": {"1": 0.9, "16": 0.8}}))


def test_report_projects_70_epochs_from_the_steady_rate(tmp_path: Path) -> None:
    write_run(tmp_path)
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "results" / "rehearsal.json").read_text())
    assert out["train_images"] == 100000 and out["val_images"] == 5000
    assert out["epoch_steady_img_per_s"] == 10000 and out["epoch_steady_of_ceiling"] == 0.5
    assert out["epoch_s"] == 20.0 and out["epoch_of_ceiling"] == 0.25
    # epoch 1's 22 s, then 69 epochs of 100,000 / 10,000 s training plus 2 s of validation each
    assert out["projected_70_epochs_h"] == round((22 + 69 * 12) / 3600, 2)
    assert out["train_shards_img_per_s"] == 2000 and out["train_shards_per_core_vs_pil_1"] == 0.5
    table = result.stdout
    assert "| train (failed) | 100 | 100000 | 1,000 | 4.0 | 8.0 |" in table
    assert "| shards | 100 | 105000 | 1,050 | 0.0 | 2.0 | 2.0 |" in table
