"""Issue 16, item 5: the source-size study's runs gathered into ``source_size.json`` and its two plots.

    PYTHONPATH=. python3 benchmarks/source_size.py imagenette=/tmp/zf/out/imagenette \
        imagenette_imagewoof=/tmp/zf/out/imagenette_imagewoof mini_imagenet=/tmp/zf/out/mini_imagenet \
        --sources /tmp/zf_sources/sources.json --out docs/results

Each NAME=ROOT is one source's output root: the ZF_OUTPUT_ROOT of its ``dagster asset materialize`` with
benchmarks/reproduce/source_size.yaml (benchmarks/source_size.sh). From the records there (``_records/``, as
``zf-pipeline where`` reads them), per source:

- ``classes``: the source's classes (its train shards); ``images``: train + val images sharded, as the issue
  counts them (``images_train``: those the network trained on);
- ``table7``: Table 7's Caltech-101 (30/class) means over the splits, keyed ``<classifier>_<layer>``;
- ``table4_30``: Table 4 at 30/class, ``pretrained`` (softmax on fc7) and ``scratch`` (non-pretrained);
- ``conv1_hf_median`` and ``source_val_top1_err`` (10 crops): the trained network's ``result.json``;
- ``px``: the median shorter side of the source's images, from make_sources.py's ``sources.json`` (the shards
  hold 256 px crops only); null without ``--sources``.

``table7_std`` and ``table4_30_std`` give the std over the splits beside the means. A source whose Table 7 or
Table 4 has not been materialized yet (a hold cut short) is reported with what it has: ``missing`` names the
tables it lacks, and their values are empty (null). A source run without Table 4's
non-pretrained rows (source_size_no_scratch.yaml: they do not depend on the source) takes them from the first
source that has them, which ``scratch_from`` names. Writes
``source_size.json``, ``source_size_layers.png`` (accuracy against layer, one line per source, the paper's
beside them) and ``source_size_classes.png`` (fc7 accuracy against source classes) under ``--out``; with
``--keep DIR`` a copy of what it read of each source under ``DIR/NAME`` (records, tables, result.json), from
which it redraws the report when that source's run is gone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

from zf_pipeline import render, tables
from zf_pipeline.cli import RECORDS, recorded_assets, where
from zf_pipeline.io import read_record, write_bytes_atomic

N_TRAIN = tables.TABLE7_N_TRAIN["caltech101"]  # 30/class: Table 7's Caltech-101 protocol and Table 4's row read
TABLE4_KEYS = {"pretrained": "pretrained", "non-pretrained": "scratch"}
TABLES = ("table7", "table4")
ABLATIONS = ("table1", "table2")  # item 6's tables (source_size.sh tables), kept beside them when a hold ran them
FIGURES = ("fig8", "fig3")  # kept beside the tables when a hold rendered them (SELECTION in source_size.sh)
FIGURE_LAYERS = ("conv1", "conv2", "conv5")  # those reproduction.md shows; the rest stay in the archive


def record(root: Path, asset: str) -> dict:
    """``asset``'s last record under the output ``root``; a missing one fails as ``zf-pipeline where`` does."""
    where(root, asset)
    return read_record(root / RECORDS / f"{asset}.json", root)


def published(root: Path, asset: str) -> list[dict]:
    """The rows of a table asset's published Parquet file (``outputs/<asset>/<asset>.parquet``)."""
    return pq.read_table(record(root, asset)["path"]).to_pylist()


def gather(root: Path, px: int | None = None) -> dict:
    """One source's entry of the study from its output ``root``."""
    run = json.loads((Path(record(root, "zfnet_model")["path"]) / "result.json").read_text())
    recorded = set(recorded_assets(root))  # a table without a record has not been materialized yet: None
    tables_rows = {asset: published(root, asset) if asset in recorded else None for asset in TABLES}
    t7 = {f"{r['classifier']}_{r['layer']}": r for r in tables_rows["table7"] or [] if r["n_train"] == N_TRAIN}
    rows = {r["row"]: r for r in tables_rows["table4"] or [] if r["n_train"] == N_TRAIN}
    t4 = {key: rows.get(tables.METHOD_ROW[method], {}) for method, key in TABLE4_KEYS.items()}
    return {
        "classes": record(root, "imagenet_train_shards")["classes"],
        "images": run["images_train"] + run["images_val"],
        "images_train": run["images_train"],
        "px": px,
        "table7": {key: r["ours_mean"] for key, r in t7.items()},
        "table7_std": {key: r["ours_std"] for key, r in t7.items()},
        "table4_30": {key: r.get("ours_mean") for key, r in t4.items()},
        "table4_30_std": {key: r.get("ours_std") for key, r in t4.items()},
        "conv1_hf_median": run["conv1_hf_median"],
        "source_val_top1_err": run.get("val_10crop_top1_err", run["val_center_top1_err"]),
        "missing": [asset for asset, published_rows in tables_rows.items() if published_rows is None],
    }


def kept_files(root: Path) -> list[Path]:
    """What :func:`gather` reads under ``root`` (records, result.json, the tables' Parquet files) with the learning
    curve, the tables' Markdown, and Tables 1 / 2 (with each of their networks' result.json, metrics.jsonl and
    learning curve) and Fig. 8 / Fig. 3 (layers ``FIGURE_LAYERS``) where they ran: a copy of these redraws the report
    and shows the runs."""
    present = set(recorded_assets(root))
    recorded = [asset for asset in ("zfnet_model", "imagenet_train_shards", *TABLES, *ABLATIONS, *FIGURES)
                if asset in present]
    tables_read = [Path(record(root, asset)["path"]) for asset in (*TABLES, *ABLATIONS) if asset in recorded]
    files = [root / RECORDS / f"{asset}.json" for asset in recorded]
    if "zfnet_model" in recorded:  # a hold of Table 1 alone has none
        run = Path(record(root, "zfnet_model")["path"])
        files += [run / "result.json", run / "learning_curve.png"]
    files += tables_read + [path.with_suffix(".md") for path in tables_read]
    if any(asset in recorded for asset in ABLATIONS):  # every network's result and rates, a table cut short included
        files += [path for pattern in ("result.json", "metrics.jsonl", "learning_curve.png")
                  for path in sorted(root.glob(f"train/*/{pattern}"))]
    files += [Path(png) for asset in FIGURES if asset in recorded
              for layer, png in record(root, asset)["pngs"].items() if layer in FIGURE_LAYERS]
    return [path for path in dict.fromkeys(files) if path.exists()]


def keep(root: Path, target: Path) -> None:
    """Replace ``target`` with :func:`kept_files` of ``root``, at the same paths relative to the root."""
    fresh = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    for path in kept_files(root):
        (fresh / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, fresh / path.relative_to(root))
    shutil.rmtree(target, ignore_errors=True)
    fresh.rename(target)


def share_scratch(study: dict[str, dict]) -> None:
    """Fill the scratch row of sources run without one (source_size_no_scratch.yaml) from the first source that has
    it: those runs depend on the target alone. ``scratch_from`` names the source whose runs each scratch row is."""
    measured = [name for name, entry in study.items() if entry["table4_30"]["scratch"] is not None]
    for name, entry in study.items():
        entry["scratch_from"] = name if name in measured else next(iter(measured), None)
        if entry["scratch_from"] not in (name, None):
            for key in ("table4_30", "table4_30_std"):
                entry[key]["scratch"] = study[entry["scratch_from"]][key]["scratch"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=ROOT", help="a source's name and its output root")
    parser.add_argument("--sources", type=Path, help="make_sources.py's sources.json (for px)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="where the JSON and plots go")
    parser.add_argument("--keep", type=Path, help="copy what the report read of each source to KEEP/NAME, a root "
                                                  "this script reads again (NAME=KEEP/NAME)")
    parser.add_argument("--keep-only", action="store_true", help="only the --keep copies, no JSON or plots (a hold "
                                                                 "of Tables 1 and 2 alone, not a source-size point)")
    args = parser.parse_args(argv)
    if args.keep_only and not args.keep:
        parser.error("--keep-only needs --keep")
    px = {name: s["px"] for name, s in json.loads(args.sources.read_text()).items()} if args.sources else {}
    try:
        pairs = [run.split("=", 1) for run in args.runs]
        if any(len(pair) != 2 or not all(pair) for pair in pairs):
            raise ValueError(f"expected NAME=ROOT pairs, got {' '.join(args.runs)}")
        study = {} if args.keep_only else {name: gather(Path(root).resolve(), px.get(name)) for name, root in pairs}
        share_scratch(study)
        for name, root in pairs if args.keep else []:
            if Path(root).resolve() != (args.keep / name).resolve():
                keep(Path(root).resolve(), args.keep / name)
    except (FileNotFoundError, ValueError) as error:
        print(f"source_size: {error}", file=sys.stderr)
        return 1
    if args.keep_only:
        print(f"kept {', '.join(name for name, _ in pairs)} under {args.keep}")
        return 0
    write_bytes_atomic(args.out / "source_size.json", (json.dumps(study, indent=1) + "\n").encode())
    render.render_source_size_layers(study, args.out / "source_size_layers.png")
    render.render_source_size_classes(study, args.out / "source_size_classes.png")
    for name, entry in study.items():
        print(f"{name}: {entry['classes']} classes, {entry['images']:,} images; Table 7 {entry['table7']}; "
              f"Table 4 at 30/class {entry['table4_30']}"
              + (f"; not materialized yet: {', '.join(entry['missing'])}" if entry["missing"] else ""))
    print(f"wrote {args.out / 'source_size.json'} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
