"""Tables 1 and 2 of the paper: our errors beside the published ones, as Arrow tables and markdown.

Each function takes plain numbers (or run folders, through ``*_from_runs``) and returns
``(pyarrow.Table, markdown string)`` so that a Dagster asset can store the table as Parquet and show
the markdown. Missing numbers (a run not made, a column the paper leaves empty) are nulls / "—".
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from zf_pipeline.io import write_bytes_atomic, write_table
from zf_pipeline.models.zfnet import TABLE1_PAPER

# Table 2 (ImageNet 2012 classification error %): (val top-1, val top-5, test top-5); None = not given.
TABLE2_PAPER: dict[str, tuple[float | None, float | None, float | None]] = {
    "(Krizhevsky et al., 2012), 1 convnet": (40.7, 18.2, None),
    "(Krizhevsky et al., 2012), 5 convnets": (38.1, 16.4, 16.4),
    "(Krizhevsky et al., 2012), 1 convnets*": (39.0, 16.6, None),
    "(Krizhevsky et al., 2012), 7 convnets*": (36.7, 15.4, 15.3),
    "Our replication of (Krizhevsky et al., 2012), 1 convnet": (40.5, 18.1, None),
    "1 convnet as per Fig. 2": (38.3, 16.4, 16.5),
    "5 convnets as per Fig. 2": (36.6, 15.3, 15.3),
}

TABLE1_LABELS = {
    "krizhevsky": "Our replication of (Krizhevsky et al., 2012), 1 convnet",
    "removed_3_4": "Removed layers 3,4",
    "removed_7": "Removed layer 7",
    "removed_6_7": "Removed layers 6,7",
    "removed_3_4_6_7": "Removed layer 3,4,6,7",
    "fc_2048": "Adjust layers 6,7: 2048 units",
    "fc_8192": "Adjust layers 6,7: 8192 units",
    "ours": "Our Model (as per Fig. 2)",
    "ours_fc_8192": "Adjust layers 6,7: 8192 units and Layers 3,4,5: 512,1024,512 maps",
}

_ERRS = ("train_top1_err", "val_top1_err", "val_top5_err")


def markdown(table: pa.Table) -> str:
    """A GitHub-style markdown rendering of a small table (numbers with one decimal, nulls as '—')."""

    def cell(v) -> str:
        if v is None:
            return "—"
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    cols = table.column_names
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in table.to_pylist()]
    return "\n".join(lines) + "\n"


def table1(rows: Sequence[dict]) -> tuple[pa.Table, str]:
    """Table 1: one row per architecture, ``rows`` holding ``arch`` and our ``train_top1_err``,
    ``val_top1_err``, ``val_top5_err`` (%); the paper's three numbers go beside them."""
    out = []
    for r in rows:
        paper = TABLE1_PAPER.get(r["arch"], (None, None, None))
        row = {"arch": r["arch"], "model": TABLE1_LABELS.get(r["arch"], r["arch"])}
        for name, p in zip(_ERRS, paper):
            row[f"paper_{name}"] = p
            row[name] = r.get(name)
        out.append(row)
    schema = pa.schema([("arch", pa.string()), ("model", pa.string())]
                       + [(f"{p}{n}", pa.float64()) for n in _ERRS for p in ("paper_", "")])
    table = pa.Table.from_pylist(out, schema=schema)
    return table, markdown(table)


def run_errors(run_dir: str | os.PathLike) -> dict:
    """Table 1's numbers of one finished run (its ``result.json``): train top-1, val 10-crop top-1/top-5."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected a finished training run (result.json is written last)")
    r = json.loads(path.read_text())
    return {"arch": r["arch"], "train_top1_err": r.get("train_center_top1_err"),
            "val_top1_err": r.get("val_10crop_top1_err", r["val_center_top1_err"]),
            "val_top5_err": r.get("val_10crop_top5_err", r["val_center_top5_err"])}


def table1_from_runs(run_dirs: Sequence[str | os.PathLike]) -> tuple[pa.Table, str]:
    """Table 1 from finished run folders, one per architecture."""
    return table1([run_errors(d) for d in run_dirs])


def table2(single: dict | None, ensemble: dict | None, replication: dict | None = None) -> tuple[pa.Table, str]:
    """Table 2: the paper's rows, with ours where made: ``single`` (1 convnet as per Fig. 2), ``ensemble``
    (N convnets averaged; ``models`` gives N) and ``replication`` (Krizhevsky's net), each a dict holding
    ``val_top1_err`` and ``val_top5_err`` in %. The paper's test top-5 has no counterpart here."""
    ours = {"Our replication of (Krizhevsky et al., 2012), 1 convnet": replication,
            "1 convnet as per Fig. 2": single, "5 convnets as per Fig. 2": ensemble}
    rows = []
    for model, (p1, p5, pt5) in TABLE2_PAPER.items():
        mine = ours.get(model) or {}
        rows.append({"model": model, "paper_val_top1_err": p1, "paper_val_top5_err": p5, "paper_test_top5_err": pt5,
                     "val_top1_err": mine.get("val_top1_err"), "val_top5_err": mine.get("val_top5_err"),
                     "models": mine.get("models", 1 if mine else None)})
    schema = pa.schema([("model", pa.string())] + [(c, pa.float64()) for c in (
        "paper_val_top1_err", "paper_val_top5_err", "paper_test_top5_err", "val_top1_err", "val_top5_err")]
        + [("models", pa.int64())])
    table = pa.Table.from_pylist(rows, schema=schema)
    return table, markdown(table)


def publish(table: pa.Table, markdown_text: str, folder: str | os.PathLike, name: str) -> dict[str, str]:
    """Write a results table where a reader looks for it, ``<folder>/<name>.{parquet,csv,md}`` (each atomically),
    the markdown as shown in the UI; returns the paths (``path``: the Parquet file) and the markdown."""
    parquet, csv = write_table(table, Path(folder) / name)
    md = Path(folder) / f"{name}.md"
    write_bytes_atomic(md, (markdown_text.rstrip("\n") + "\n").encode())
    return {"path": str(parquet), "csv": str(csv), "md": str(md), "markdown": markdown_text}
