"""Tables 4-7 and Fig. 7: our numbers beside the paper's, as pyarrow tables, markdown and files.

Paper numbers are copied from the paper's text (seed); ``None`` where the paper gives no std.
Our numbers are mean +- std (population std, ddof=0, over the splits) of :data:`RUN_SCHEMA` rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zf_pipeline.io import atomic_path
from zf_pipeline.transfer.protocol import VOC_CLASSES

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
    return table, ("**Table 7: per-layer linear classifiers** (mean per-class accuracy %)\n\n" + _markdown(header, lines)
                   + _note(notes))


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


@contextmanager
def _png(path: str | os.PathLike, **subplots: Any) -> Iterator[Any]:
    """Yield the axes of ``plt.subplots(**subplots)``; on success write the figure to ``path`` as a PNG,
    atomically. The figure is closed either way, so a failed plot does not leak it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield axes
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)


def plot_fig7(curve: pa.Table, path: str | os.PathLike) -> Path:
    """Draw :func:`fig7`'s curve (mean +- std over splits) with the paper's Table 5 points and Bo et al.'s
    60/class result as a line, to a PNG written atomically."""
    with _png(path, figsize=(6, 4)) as ax:
        for method in sorted(set(curve["row"].to_pylist())):
            part = curve.filter(pc.equal(curve["row"], method))
            ax.errorbar(part["n_train"].to_numpy(), part["ours_mean"].to_numpy(), yerr=part["ours_std"].to_numpy(),
                        marker="o", markersize=3, capsize=2, label=f"ours, {method}")
        for row in ("ImageNet-pretrained convnet", "Non-pretrained convnet"):
            points = sorted(PAPER_TABLE5[row].items())
            ax.plot([n for n, _ in points], [m for _, (m, _) in points], "x", label=f"paper, {row}")
        ax.axhline(PAPER_TABLE5["(Bo et al., 2013)"][60][0], color="grey", linestyle="--",
                   label="Bo et al. 2013, 60/class")
        ax.set_xlabel("training images per class")
        ax.set_ylabel("mean per-class accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Caltech-256")
        ax.legend(fontsize=7)
    return Path(path)


def plot_table7(table: pa.Table, path: str | os.PathLike) -> Path:
    """Draw :func:`table7` as accuracy against depth, one panel per dataset, to a PNG written atomically:
    ours (mean +- std over splits) as lines, the paper's (for the paper's datasets) as dashed crosses of the
    same colour. (classifier, layer) pairs we did not run (``ours_mean`` None) are left out of our lines."""
    rows = table.to_pylist()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    classifiers = list(dict.fromkeys(classifier for classifier, _ in PAPER_TABLE7))
    with _png(path, ncols=len(datasets), figsize=(5 * len(datasets), 4), squeeze=False, sharey=True) as axes:
        for ax, dataset in zip(axes[0], datasets):
            for i, classifier in enumerate(classifiers):
                part = [r for r in rows if (r["dataset"], r["classifier"]) == (dataset, classifier)]
                ran = [r for r in part if r["ours_mean"] is not None]
                if ran:
                    ax.errorbar([TABLE7_LAYERS.index(r["layer"]) for r in ran], [r["ours_mean"] for r in ran],
                                yerr=[r["ours_std"] for r in ran], color=f"C{i}", marker="o", markersize=3,
                                capsize=2, label=f"ours, {classifier}")
                paper = [r for r in part if r["paper_mean"] is not None]
                if paper:
                    ax.plot([TABLE7_LAYERS.index(r["layer"]) for r in paper], [r["paper_mean"] for r in paper], "x--",
                            color=f"C{i}", label=f"paper, {classifier}")
            ax.set_xticks(range(len(TABLE7_LAYERS)), TABLE7_LAYERS)
            ax.set_xlabel("layer")
            ax.set_ylim(0, 100)
            ax.set_title(f"{dataset}, {next(r['n_train'] for r in rows if r['dataset'] == dataset)} train/class")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("mean per-class accuracy (%)")
    return Path(path)


def missing_values(table: pa.Table, column: str, expected: Iterable) -> list[str]:
    """Asset-check helper: a message per expected value of ``column`` that the table lacks."""
    present = set(table[column].to_pylist())
    return [f"{column}={value!r} is missing" for value in expected if value not in present]


def out_of_range(table: pa.Table, columns: Sequence[str], low: float = 0.0, high: float = 100.0) -> list[str]:
    """Asset-check helper: a message per value of ``columns`` outside ``[low, high]`` (nulls are allowed;
    NaN is not)."""
    problems = []
    for column in columns:
        values = table[column].to_pylist()
        for i, value in enumerate(values):
            if value is not None and not (low <= value <= high):
                problems.append(f"{column}[{i}] = {value} is outside [{low}, {high}]")
    return problems


def run_problems(runs: pa.Table, *, layers: Iterable[str], n_splits: int, n_classes: int) -> list[str]:
    """Asset-check helper for :data:`RUN_SCHEMA` runs: every layer present, every split of every
    (method, layer, classifier, n_train) present, every class scored, accuracies within [0, 100]."""
    problems = missing_values(runs, "layer", layers)
    splits: dict[tuple, set[int]] = {}
    for row in runs.select(["method", "layer", "classifier", "n_train", "split_index"]).to_pylist():
        splits.setdefault(tuple(row.values())[:4], set()).add(row["split_index"])
    for key, present in splits.items():
        if present != set(range(n_splits)):
            problems.append(f"{key}: splits {sorted(set(range(n_splits)) - present)} are missing")
    for i, per_class in enumerate(runs["per_class_accuracy"].to_pylist()):
        unscored = [c for c, value in enumerate(per_class) if value is None or math.isnan(value)]
        if len(per_class) != n_classes or unscored:
            problems.append(f"run {i}: {n_classes} classes expected, {len(per_class)} scored, "
                            f"classes without test images {unscored[:10]}")
        problems += [f"run {i}: class {c} accuracy {v} is outside [0, 100]"
                     for c, v in enumerate(per_class) if v is not None and not 0 <= v <= 100]
    return problems + out_of_range(runs, ["accuracy"])
