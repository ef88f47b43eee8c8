"""The paper's tables, our numbers beside the published ones: Tables 1-2 (ImageNet) and Tables 4-7 and
Fig. 7's numbers (transfer), each as ``(pyarrow.Table, markdown)``, and :func:`publish`, which writes one
where a reader looks for it.

Paper numbers are copied from the paper's text; ``None`` where the paper gives no number or std (shown as
"—" / "-"). Transfer numbers are mean +- std (population std, ddof=0, over the splits) of
:data:`~zf_pipeline.transfer.protocol.RUN_SCHEMA` rows. Where each table is drawn: :mod:`zf_pipeline.render`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zf_pipeline.io import write_bytes_atomic, write_table
from zf_pipeline.models.zfnet import TABLE1_PAPER
from zf_pipeline.transfer.protocol import VOC_CLASSES

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


# The orderings of Tables 1 and 2 that section 4's discussion rests on: (claim, the row with the lower val top-1
# error, the row with the higher one), rows by Table 1's arch or Table 2's model.
TABLE1_ORDERINGS = (
    ("our model beats Krizhevsky et al.'s layout", "ours", "krizhevsky"),
    ("removing layers 3,4 hurts more than removing layers 6,7", "removed_6_7", "removed_3_4"),
    ("wider middle layers (512, 1024, 512 maps) help, with 8192-unit layers 6,7", "ours_fc_8192", "fc_8192"),
)
TABLE2_ORDERINGS = (("the ensemble beats one model", "5 convnets as per Fig. 2", "1 convnet as per Fig. 2"),)


def orderings(table: pa.Table, key: str, claims: Sequence[tuple[str, str, str]]) -> list[dict]:
    """Whether each claim's ordering of val top-1 error holds in our rows and in the paper's (rows by ``key``);
    ``holds`` is None when either row was not run. Where both rows are means over seeds (``val_top1_err_sd``,
    ``seeds``), ``resolved`` says whether the gap exceeds two standard errors of the difference of the means."""
    rows = {r[key]: r for r in table.to_pylist()}
    out = []
    for claim, lower, higher in claims:
        a, b = rows.get(lower, {}), rows.get(higher, {})
        ours = [a.get("val_top1_err"), b.get("val_top1_err")]
        paper = [a.get("paper_val_top1_err"), b.get("paper_val_top1_err")]
        check = {"claim": claim, "lower": lower, "higher": higher, "ours": ours, "paper": paper,
                 "holds": None if None in ours else ours[0] < ours[1], "resolved": None}
        if check["holds"] is not None and all((r.get("seeds") or 0) > 1 for r in (a, b)):
            se = math.sqrt(sum(r["val_top1_err_sd"] ** 2 / r["seeds"] for r in (a, b)))
            check["resolved"] = abs(ours[0] - ours[1]) > 2 * se
        out.append(check)
    return out


def orderings_markdown(checks: Sequence[dict]) -> str:
    """The :func:`orderings` as a list under the table."""
    def pair(v):
        return " vs ".join("—" if x is None else f"{x:.1f}" for x in v)

    verdict = {True: "**holds**", False: "**does not hold**", None: "not run"}
    noise = {True: "; the gap exceeds two standard errors over the seeds",
             False: "; within two standard errors over the seeds: not resolved", None: ""}
    lines = [f"- {c['claim']}: {verdict[c['holds']]} (val top-1 error, {c['lower']} vs {c['higher']}: ours "
             f"{pair(c['ours'])}, paper {pair(c['paper'])}{noise[c.get('resolved')]})" for c in checks]
    return "\nThe paper's orderings:\n\n" + "\n".join(lines) + "\n"


def table1(rows: Sequence[dict]) -> tuple[pa.Table, str]:
    """Table 1: one row per architecture, ``rows`` holding ``arch`` and our ``train_top1_err``,
    ``val_top1_err``, ``val_top5_err`` (%); several rows of one architecture (seeds) give their mean, with the
    val top-1 error's SD and the number of ``seeds``. The paper's three numbers go beside them, and under the
    markdown which of :data:`TABLE1_ORDERINGS` hold."""
    runs: dict[str, list[dict]] = {}
    for r in rows:
        runs.setdefault(r["arch"], []).append(r)
    out = []
    for arch, same in runs.items():
        paper = TABLE1_PAPER.get(arch, (None, None, None))
        row = {"arch": arch, "model": TABLE1_LABELS.get(arch, arch)}
        for name, p in zip(_ERRS, paper):
            values = [r[name] for r in same if r.get(name) is not None]
            row[f"paper_{name}"] = p
            row[name] = statistics.mean(values) if values else None
        top1 = [r["val_top1_err"] for r in same if r.get("val_top1_err") is not None]
        row["val_top1_err_sd"] = statistics.stdev(top1) if len(top1) > 1 else None
        row["seeds"] = len(same)
        out.append(row)
    schema = pa.schema([("arch", pa.string()), ("model", pa.string())]
                       + [(f"{p}{n}", pa.float64()) for n in _ERRS for p in ("paper_", "")]
                       + [("val_top1_err_sd", pa.float64()), ("seeds", pa.int64())])
    table = pa.Table.from_pylist(out, schema=schema)
    return table, markdown(table) + orderings_markdown(orderings(table, "arch", TABLE1_ORDERINGS))


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
    """Table 1 from finished run folders, one or more (seeds) per architecture."""
    return table1([run_errors(d) for d in run_dirs])


def table2(single: dict | None, ensemble: dict | None, replication: dict | None = None,
           members: Sequence[dict] = (), sizes: Sequence[dict] = ()) -> tuple[pa.Table, str]:
    """Table 2: the paper's rows, with ours where made: ``single`` (1 convnet as per Fig. 2), ``ensemble``
    (N convnets averaged; ``models`` gives N) and ``replication`` (Krizhevsky's net), each a dict holding
    ``val_top1_err`` and ``val_top5_err`` in %. The paper's test top-5 has no counterpart here. ``members``
    (the ensemble's networks, one at a time) adds their spread: how far one seed moves any single row;
    ``sizes`` (:func:`zf_pipeline.evaluate.ensemble_sizes`) what each added network buys."""
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
    md = markdown(table) + orderings_markdown(orderings(table, "model", TABLE2_ORDERINGS))
    if len(members) > 1:
        top1 = [m["val_top1_err"] for m in members]
        md += (f"\nThe ensemble's {len(top1)} networks alone: val top-1 error {statistics.mean(top1):.2f} "
               f"+- {statistics.stdev(top1):.2f} (min {min(top1):.2f}, max {max(top1):.2f}), the spread a seed "
               f"gives any one-network row of Tables 1 and 2.\n")
    if len(sizes) > 1:
        md += ("\nVal top-1 error of k networks averaged (mean over k-subsets of the ensemble's): "
               + ", ".join(f"{s['models']}: {s['top1_err']:.2f}" for s in sizes) + ".\n")
    return table, md


# ------------------------------------------------------------------ transfer (section 5)

Score = tuple[float, float | None]  # (mean, std)

# Table 4, Caltech-101: row -> {n_train: (mean, std)}.
PAPER_TABLE4: dict[str, dict[int, Score]] = {
    "(Bo et al., 2013)": {30: (81.4, 0.33)},
    "(Jianchao et al., 2009)": {15: (73.2, None), 30: (84.3, None)},
    "Non-pretrained convnet": {15: (22.8, 1.5), 30: (46.5, 1.7)},
    "ImageNet-pretrained convnet": {15: (83.8, 0.5), 30: (86.5, 0.5)},
}
# Table 5, Caltech-256.
PAPER_TABLE5: dict[str, dict[int, Score]] = {
    "(Sohn et al., 2011)": {15: (35.1, None), 30: (42.1, None), 45: (45.7, None), 60: (47.9, None)},
    "(Bo et al., 2013)": {15: (40.5, 0.4), 30: (48.0, 0.2), 45: (51.9, 0.2), 60: (55.2, 0.3)},
    "Non-pretrained convnet": {15: (9.0, 1.4), 30: (22.5, 0.7), 45: (31.2, 0.5), 60: (38.8, 1.4)},
    "ImageNet-pretrained convnet": {15: (65.7, 0.2), 30: (70.6, 0.2), 45: (72.7, 0.4), 60: (74.2, 0.3)},
}
# Our run's `method` -> the paper's row it reproduces.
METHOD_ROW = {"pretrained": "ImageNet-pretrained convnet", "non-pretrained": "Non-pretrained convnet"}

# Table 6, PASCAL VOC 2012 test set: class -> ([A] Sande et al. 2012, [B] Yan et al. 2012, ours), "Acc %".
PAPER_TABLE6: dict[str, tuple[float, float, float]] = dict(
    zip(
        VOC_CLASSES,
        [
            (92.0, 97.3, 96.0), (74.2, 84.2, 77.1), (73.0, 80.8, 88.4), (77.5, 85.3, 85.5), (54.3, 60.8, 55.8),
            (85.2, 89.9, 85.8), (81.9, 86.8, 78.6), (76.4, 89.3, 91.2), (65.2, 75.4, 65.0), (63.2, 77.8, 74.4),
            (63.2, 77.8, 67.7), (68.9, 83.0, 87.8), (78.2, 87.5, 86.0), (81.0, 90.1, 85.1), (91.6, 95.0, 90.9),
            (55.9, 57.8, 52.2), (69.4, 79.2, 83.6), (65.4, 73.4, 61.1), (86.7, 94.5, 91.8), (77.4, 80.7, 76.1),
        ],
    )
)
PAPER_TABLE6_MEAN = (74.3, 82.2, 79.0)

# Table 7: (classifier, layer) -> (Caltech-101 30/class, Caltech-256 60/class).
PAPER_TABLE7: dict[tuple[str, str], tuple[Score, Score]] = {
    ("svm", "conv1"): ((44.8, 0.7), (24.6, 0.4)),
    ("svm", "conv2"): ((66.2, 0.5), (39.6, 0.3)),
    ("svm", "conv3"): ((72.3, 0.4), (46.0, 0.3)),
    ("svm", "conv4"): ((76.6, 0.4), (51.3, 0.1)),
    ("svm", "conv5"): ((86.2, 0.8), (65.6, 0.3)),
    ("svm", "fc7"): ((85.5, 0.4), (71.7, 0.2)),
    ("softmax", "conv5"): ((82.9, 0.4), (65.7, 0.5)),
    ("softmax", "fc7"): ((85.4, 0.4), (72.6, 0.1)),
}
TABLE7_DATASETS = ("caltech101", "caltech256")
TABLE7_N_TRAIN = {"caltech101": 30, "caltech256": 60}
TABLE7_LAYERS = tuple(dict.fromkeys(layer for _, layer in PAPER_TABLE7))  # by depth: conv1..conv5, fc7

SUMMARY_SCHEMA = pa.schema(
    [
        ("row", pa.string()),
        ("n_train", pa.int32()),
        ("ours_mean", pa.float64()),
        ("ours_std", pa.float64()),
        ("n_splits", pa.int32()),
        ("paper_mean", pa.float64()),
        ("paper_std", pa.float64()),
    ]
)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std())


def summarize(runs: pa.Table, keys: Sequence[str]) -> dict[tuple, tuple[float, float, int]]:
    """``keys`` values -> (mean, std, number of splits) of the accuracy over the splits."""
    groups: dict[tuple, list[float]] = {}
    for row in runs.select([*keys, "accuracy"]).to_pylist():
        groups.setdefault(tuple(row[k] for k in keys), []).append(row["accuracy"])
    return {key: (*_mean_std(values), len(values)) for key, values in groups.items()}


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.1f}" if std is None or math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _caltech_table(runs: pa.Table, paper: dict[str, dict[int, Score]], title: str) -> tuple[pa.Table, str]:
    ours = summarize(runs, ["method", "n_train"])
    n_trains = sorted({n for scores in paper.values() for n in scores} | {n for _, n in ours})
    records = []
    for row, scores in paper.items():
        method = next((m for m, r in METHOD_ROW.items() if r == row), None)
        for n_train in n_trains:
            mean, std, count = ours.get((method, n_train), (None, None, 0))
            paper_mean, paper_std = scores.get(n_train, (None, None))
            if count or paper_mean is not None:
                records.append(dict(row=row, n_train=n_train, ours_mean=mean, ours_std=std, n_splits=count,
                                    paper_mean=paper_mean, paper_std=paper_std))
    table = pa.Table.from_pylist(records, schema=SUMMARY_SCHEMA)
    header = ["# train / class", *[f"{n}/class ours" for n in n_trains], *[f"{n}/class paper" for n in n_trains]]
    lines = []
    for row in paper:
        cells = {r["n_train"]: r for r in records if r["row"] == row}
        cell = [cells.get(n, {}) for n in n_trains]
        lines.append([row] + [_fmt(c.get("ours_mean"), c.get("ours_std")) for c in cell]
                     + [_fmt(c.get("paper_mean"), c.get("paper_std")) for c in cell])
    return table, (f"**{title}** (mean per-class accuracy %, mean ± std over splits)\n\n" + _markdown(header, lines)
                   + _note(_unconverged(runs)))


def _unconverged(runs: pa.Table, prefix: str = "") -> list[str]:
    """The runs that did not converge (a probe short of its tolerance, a network trained from scratch that
    never learned), named; they stay in the means."""
    bad = [r for r in runs.select(["method", "layer", "classifier", "n_train", "split_index", "converged"]).to_pylist()
           if not r["converged"]]
    return [f"{prefix}{METHOD_ROW.get(r['method'], r['method'])} ({r['classifier']} on {r['layer']}), "
            f"{r['n_train']}/class, split {r['split_index']}" for r in bad]


def _note(unconverged: list[str]) -> str:
    """The line a table carries when some of its runs did not converge, so a table of them does not look clean."""
    return f"\n\nDid not converge, included in the means: {'; '.join(unconverged)}." if unconverged else ""


def table4(runs: pa.Table) -> tuple[pa.Table, str]:
    """Table 4, Caltech-101: our pretrained / non-pretrained runs at 15 and 30 per class beside the paper's rows."""
    return _caltech_table(runs, PAPER_TABLE4, "Table 4: Caltech-101")


def table5(runs: pa.Table) -> tuple[pa.Table, str]:
    """Table 5, Caltech-256: our runs at 15, 30, 45, 60 per class beside the paper's rows."""
    return _caltech_table(runs, PAPER_TABLE5, "Table 5: Caltech-256")


def table6(voc: pa.Table) -> tuple[pa.Table, str]:
    """Table 6, PASCAL VOC 2012: our per-class AP on val beside the paper's test-set numbers, plus the mean."""
    ours = dict(zip(voc["class"].to_pylist(), voc["ap"].to_pylist()))
    classes = list(PAPER_TABLE6)
    mean = float(np.mean([ours[c] for c in classes if c in ours])) if ours else None
    paper = [PAPER_TABLE6[c] for c in classes] + [PAPER_TABLE6_MEAN]
    table = pa.table(
        {
            "class": classes + ["mean"],
            "ours_ap_val": [ours.get(c) for c in classes] + [mean],
            "paper_ours_test": [p[2] for p in paper],
            "paper_sande2012_test": [p[0] for p in paper],
            "paper_yan2012_test": [p[1] for p in paper],
        }
    )
    header = ["class", "ours (AP %, val)", "paper ours (test)", "[A] Sande 2012", "[B] Yan 2012"]
    rows = [[r["class"], _fmt(r["ours_ap_val"], None), _fmt(r["paper_ours_test"], None),
             _fmt(r["paper_sande2012_test"], None), _fmt(r["paper_yan2012_test"], None)] for r in table.to_pylist()]
    note = ("**Table 6: PASCAL VOC 2012.** Ours: average precision on val (the test server is not reachable); "
            "the paper's numbers are on the test set, trained on train+val.\n\n")
    return table, note + _markdown(header, rows)


def table7(runs_by_dataset: dict[str, pa.Table], names: dict[str, str] | None = None) -> tuple[pa.Table, str]:
    """Table 7: per-layer SVM / softmax on Caltech-101 (30/class) and Caltech-256 (60/class).

    ``runs_by_dataset`` maps the protocol ('caltech101' / 'caltech256': which images per class) to its runs
    (other n_train values are ignored); ``names`` maps it to what the user calls the images (default: the
    protocol's name). The paper's numbers stand beside a dataset only when it is named as the paper's.
    """
    names = {d: (names or {}).get(d, d) for d in runs_by_dataset}
    records, notes = [], []
    for dataset, runs in runs_by_dataset.items():
        if dataset not in TABLE7_DATASETS:
            raise ValueError(f"Table 7 has datasets {TABLE7_DATASETS}, got {dataset!r}")
        runs = runs.filter(pc.equal(runs["n_train"], TABLE7_N_TRAIN[dataset]))
        notes += _unconverged(runs, prefix=f"{names[dataset]}: ")
        ours = summarize(runs, ["classifier", "layer"])
        for (classifier, layer), paper in PAPER_TABLE7.items():
            mean, std, count = ours.get((classifier, layer), (None, None, 0))
            paper_mean, paper_std = paper[TABLE7_DATASETS.index(dataset)] if names[dataset] == dataset else (None, None)
            records.append(dict(dataset=names[dataset], n_train=TABLE7_N_TRAIN[dataset], classifier=classifier,
                                layer=layer, ours_mean=mean, ours_std=std, n_splits=count, paper_mean=paper_mean,
                                paper_std=paper_std))
    table = pa.Table.from_pylist(records)
    columns = [(d, who) for d in TABLE7_DATASETS if d in runs_by_dataset
               for who in (("ours", "paper") if names[d] == d else ("ours",))]
    header = ["classifier (layer)"] + [f"{names[d]} ({TABLE7_N_TRAIN[d]}/class) {who}" for d, who in columns]
    lines = []
    for classifier, layer in PAPER_TABLE7:
        cells = {r["dataset"]: r for r in records if (r["classifier"], r["layer"]) == (classifier, layer)}
        line = [f"{'SVM' if classifier == 'svm' else 'Softmax'} ({layer})"]
        for d, who in columns:
            c = cells[names[d]]
            line.append(_fmt(c[f"{who}_mean"], c[f"{who}_std"]))
        lines.append(line)
    return table, (
        "**Table 7: per-layer linear classifiers** (mean per-class accuracy %)\n\n"
        + _markdown(header, lines)
        + _note(notes)
    )


def fig7(runs: pa.Table) -> tuple[pa.Table, str]:
    """Fig. 7: Caltech-256 accuracy against training images per class, with the paper's Table 5 points beside."""
    ours = summarize(runs, ["method", "n_train"])
    records = []
    for (method, n_train), (mean, std, count) in sorted(ours.items()):
        paper = PAPER_TABLE5.get(METHOD_ROW.get(method, ""), {}).get(n_train, (None, None))
        records.append(dict(row=method, n_train=n_train, ours_mean=mean, ours_std=std, n_splits=count,
                            paper_mean=paper[0], paper_std=paper[1]))
    table = pa.Table.from_pylist(records, schema=SUMMARY_SCHEMA)
    lines = [[r["row"], str(r["n_train"]), _fmt(r["ours_mean"], r["ours_std"]), _fmt(r["paper_mean"], r["paper_std"])]
             for r in records]
    header = ["method", "train / class", "ours", "paper (Table 5)"]
    return table, "**Fig. 7: Caltech-256 accuracy vs training images per class**\n\n" + _markdown(header, lines)


def publish(table: pa.Table, markdown_text: str, folder: str | os.PathLike, name: str) -> dict[str, str]:
    """Write a results table where a reader looks for it, ``<folder>/<name>.{parquet,csv,md}`` (each atomically),
    the markdown as shown in the UI; returns the paths (``path``: the Parquet file) and the markdown."""
    parquet, csv = write_table(table, Path(folder) / name)
    md = Path(folder) / f"{name}.md"
    write_bytes_atomic(md, (markdown_text.rstrip("\n") + "\n").encode())
    return {"path": str(parquet), "csv": str(csv), "md": str(md), "markdown": markdown_text}
