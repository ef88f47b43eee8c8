"""Which start trains, and which schedule stops idling: one training run per recipe on the same shards.

    python benchmarks/init_study.py --shards TRAIN --val-shards VAL --mean MEAN --out DIR --epochs 70 [--json FILE]

Recipes (issue 16, items 2-3), on top of section 3.1's recipe as the Imagenette run used it (batch 128, lr 1e-2,
momentum 0.9, weight decay 5e-4, plateau patience 4, 5 warm-up epochs):

| recipe | init | input scale | filter radius | schedule |
| --- | --- | --- | --- | --- |
| kaiming | He normal | 1/64 | - | plateau (today's real-data run) |
| normal | N(0, 1e-2), zero biases (the paper) | 1 | - | plateau |
| normal+radius | N(0, 1e-2) | 1 | 0.1 (the paper's ECCV text) | plateau |
| kaiming+radius | He normal | 1/64 | 0.05 (binds conv1 from the start: He RMS 0.074 at 11x11x3) | plateau |
| small-conv1 | He normal, conv1 N(0, 1e-2) (the demo's recipe) | 1/8 | 0.1 | plateau |
| kaiming+stop | He normal | 1/64 | - | plateau, floor 1e-4, ends at the 3rd plateau (the first at the floor) |

Prints one row per recipe as it finishes (final val top-1, center and 10 crops; best val top-1 and its
epoch; epochs run; the epoch of the last lr drop; conv1's median high-frequency share, white noise 0.8),
then the table. Runs live in ``--out/<recipe>``; a run cut short resumes there on the next call, a finished
one is read back. ``--set key=value`` overrides any TrainConfig field for all recipes (a CPU dry run:
``--set width=0.0625 crop=64 batch_size=8 device=cpu``). ``--jobs N`` trains N recipes at once, each in a
process of its own (log: ``--out/<recipe>.log``): at Imagenette's size a run leaves most of an H200 idle
between its steps (validation, checkpoints), so several share the card well; their wall times then share it too.

``--choose YAML`` then writes the ``zfnet_model`` config of the recipe that the source-size study trains
(benchmarks/source_size.sh), by a rule fixed before the runs: of the inits whose final 10-crop error is within
1 point of kaiming's, the one with the smoothest conv1 (lowest high-frequency median); with kaiming+stop's
schedule when it ends within 0.5 points of kaiming's error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from zf_pipeline.train import TrainConfig, train

SHARED = dict(arch="ours", batch_size=128, lr=1e-2, patience=4, warmup_epochs=5, keep_epochs=())
KAIMING = dict(init="kaiming", input_scale=1 / 64)
PAPER = dict(init="normal", init_std=1e-2, input_scale=1.0)
RECIPES = {
    "kaiming": KAIMING,
    "normal": PAPER,
    "normal+radius": {**PAPER, "filter_radius": 0.1},
    "kaiming+radius": {**KAIMING, "filter_radius": 0.05},
    "small-conv1": {"init": "kaiming", "conv1_init_std": 1e-2, "input_scale": 1 / 8, "filter_radius": 0.1},
    "kaiming+stop": {**KAIMING, "max_lr_drops": 3, "min_lr": 1e-4},
}
# Each recipe as `zfnet_model` config (assets/training.py's TrainingConfig: 0 means off / as `init`).
ASSET_CONFIG = {
    "kaiming": dict(init="kaiming", input_scale=1 / 64, conv1_init_std=0.0, filter_radius=0.0),
    "normal": dict(init="normal", input_scale=1.0, conv1_init_std=0.0, filter_radius=0.0),
    "normal+radius": dict(init="normal", input_scale=1.0, conv1_init_std=0.0, filter_radius=0.1),
    "kaiming+radius": dict(init="kaiming", input_scale=1 / 64, conv1_init_std=0.0, filter_radius=0.05),
    "small-conv1": dict(init="kaiming", input_scale=1 / 8, conv1_init_std=1e-2, filter_radius=0.1),
}
STOP = dict(max_lr_drops=3, min_lr=1e-4)
INIT_TOLERANCE, STOP_TOLERANCE = 1.0, 0.5  # points of final 10-crop top-1 error against kaiming's
COLUMNS = ("recipe", "val_top1_center", "val_top1_10crop", "best_val_top1", "best_epoch", "epochs_run",
           "last_drop_epoch", "conv1_hf_median", "train_s")


def overrides(pairs: list[str]) -> dict:
    """``key=value`` strings as TrainConfig fields, each value parsed by its field's type."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    parse = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes"),
             "int | None": int, "float | None": float}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--set {pair!r}: expected key=value with key a TrainConfig field ({', '.join(types)})")
        out[key] = parse.get(types[key], str)(value)
    return out


def summarize(recipe: str, result) -> dict:
    """The table row of one finished run."""
    metrics, final = result.metrics, result.final
    best = min(metrics, key=lambda m: m["val_top1_err"])
    drops = [m["epoch"] for i, m in enumerate(metrics) if m["lr_drops"] > (metrics[i - 1]["lr_drops"] if i else 0)]
    return {
        "recipe": recipe,
        "val_top1_center": final["val_center_top1_err"],
        "val_top1_10crop": final.get("val_10crop_top1_err", float("nan")),
        "best_val_top1": best["val_top1_err"],
        "best_epoch": best["epoch"],
        "epochs_run": final["epochs_run"],
        "last_drop_epoch": drops[-1] if drops else None,  # the epoch whose plateau dropped the lr (or ended the run)
        "conv1_hf_median": final["conv1_hf_median"],
        "train_s": metrics[-1]["wall_s"],
    }


def choose(rows: list[dict]) -> tuple[dict, str]:
    """The source-size study's ``zfnet_model`` config by the rule above, and the reason in words."""
    by = {r["recipe"]: r for r in rows}
    if "kaiming" not in by:
        raise SystemExit("--choose: the rule compares against kaiming; run that recipe too")
    base = by["kaiming"]["val_top1_10crop"]
    fit = [r for r in rows if r["recipe"] in ASSET_CONFIG and r["val_top1_10crop"] <= base + INIT_TOLERANCE]
    best = min(fit, key=lambda r: r["conv1_hf_median"])
    config = dict(ASSET_CONFIG[best["recipe"]])
    why = (f"{best['recipe']}: conv1 high-frequency median {best['conv1_hf_median']:.3f}, 10-crop error "
           f"{best['val_top1_10crop']:.2f}% (kaiming {base:.2f}%, smoothest within {INIT_TOLERANCE} point)")
    stop = by.get("kaiming+stop")
    if stop and stop["val_top1_10crop"] <= base + STOP_TOLERANCE:
        config.update(STOP)
        why += (f"; kaiming+stop's schedule: {stop['val_top1_10crop']:.2f}% after {stop['epochs_run']} epochs "
                f"against {by['kaiming']['epochs_run']}")
    return config, why


def write_choice(path: Path, rows: list[dict]) -> None:
    config, why = choose(rows)
    body = "\n".join(f"        {k}: {v}" for k, v in config.items())
    path.write_text(f"# benchmarks/init_study.py --choose: {why}\nops:\n  zfnet_model:\n    config:\n{body}\n")
    print(f"chose {why} -> {path}")


def run_parallel(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Each recipe through this script in a process of its own, ``args.jobs`` at a time: the rows of those that
    finished, in order, and the recipes that failed."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [sys.executable, __file__, "--shards", args.shards, "--val-shards", args.val_shards, "--mean", args.mean,
              "--out", args.out, "--epochs", str(args.epochs), "--set", *args.set]

    def one(recipe: str) -> int:
        with open(out / f"{recipe}.log", "w") as log:
            code = subprocess.run([*common, "--recipes", recipe, "--json", str(out / f"{recipe}.json")],
                                  stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"{recipe}: exit {code} (log {out / recipe}.log)", flush=True)
        return code

    with ThreadPoolExecutor(args.jobs) as pool:
        codes = dict(zip(args.recipes, pool.map(one, args.recipes)))
    rows = [json.loads((out / f"{r}.json").read_text())[0] for r, code in codes.items() if not code]
    for row in rows:
        print("row", json.dumps(row), flush=True)
    return rows, [r for r, code in codes.items() if code]


def table(rows: list[dict]) -> str:
    def cell(v) -> str:
        return f"{v:.2f}" if isinstance(v, float) else "-" if v is None else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="training split folder (shard format)")
    p.add_argument("--val-shards", required=True)
    p.add_argument("--mean", required=True, help="pixel_mean.npy of the training split")
    p.add_argument("--out", required=True, help="one run folder per recipe goes here")
    p.add_argument("--epochs", type=int, default=70)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides for every recipe")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--jobs", type=int, default=1, help="recipes trained at once, each in its own process")
    p.add_argument("--choose", help="write the source-size study's zfnet_model config here (needs kaiming)")
    args = p.parse_args(argv)
    set_fields = overrides(args.set)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    gpu = torch.cuda.is_available()
    base = dict(shards=args.shards, val_shards=args.val_shards, mean=args.mean, epochs=args.epochs, compile=gpu,
                loader="cache" if gpu else "auto", workers=8 if gpu else 0, log_every=0, checkpoint_every=10,
                **SHARED)
    rows, failed = run_parallel(args) if args.jobs > 1 else ([], [])
    for recipe in args.recipes if args.jobs == 1 else ():
        cfg = TrainConfig(**{**base, **RECIPES[recipe], **set_fields, "out": str(Path(args.out) / recipe)})
        rows.append(summarize(recipe, train(cfg)))
        print("row", json.dumps(rows[-1]), flush=True)  # a partial table survives a timeout
    device = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"\n{device}, {set_fields.get('epochs', args.epochs)} epochs at most, val top-1 error %\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.choose:
        write_choice(Path(args.choose), rows)
    if failed:  # the others' rows are written first
        raise SystemExit(f"recipes failed: {', '.join(failed)}; their logs are in {args.out}")
    return rows


if __name__ == "__main__":
    main()
