"""Run a probe over the protocol's splits (Caltech) or the train/val split (PASCAL VOC): one row per result."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from zf_pipeline.transfer.metrics import (
    average_precision,
    confusion_matrix,
    per_class_accuracy,
)
from zf_pipeline.transfer.probes import Probe, ProbeConfig, fit_probe
from zf_pipeline.transfer.splits import split_keys, split_rows

log = logging.getLogger(__name__)

EDGE_MARGIN = 1.0  # cross-validated accuracy points: about one validation image in a hundred

RUN_SCHEMA = pa.schema(
    [
        ("method", pa.string()),  # 'pretrained' or 'non-pretrained'
        ("layer", pa.string()),  # 'conv1' ... 'conv5', 'fc6', 'fc7'
        ("classifier", pa.string()),  # 'svm' or 'softmax'
        ("n_train", pa.int32()),  # training images per class requested
        ("split_index", pa.int32()),
        ("n_train_images", pa.int32()),
        ("n_test_images", pa.int32()),
        ("accuracy", pa.float64()),  # mean of per-class accuracies on the split's test images, percent
        ("per_class_accuracy", pa.list_(pa.float64())),  # by label, NaN for a class without test images
        ("c", pa.float64()),  # regularization chosen by cross-validation inside the training images
        ("cv_accuracy", pa.float64()),  # its cross-validation score, percent (NaN without CV)
        ("converged", pa.bool_()),
    ]
)

# PASCAL VOC's 20 classes in the devkit's order (the label index of the readers).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def evaluate_splits(
    X: np.ndarray,
    y: np.ndarray,
    image_ids: Sequence[str] | np.ndarray,
    splits: pa.Table,
    config: ProbeConfig,
    *,
    method: str = "pretrained",
    layer: str = "fc7",
) -> pa.Table:
    """Train ``config``'s probe on each split's training images and score it on its test images.

    The probe (including its choice of C) only ever sees the training rows of a split.
    Returns one :data:`RUN_SCHEMA` row per (n_train, split_index) of ``splits``.
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1
    rows: list[dict] = []
    edge: list[float] = []
    for n_train, split_index in tqdm(split_keys(splits), desc=f"{config.kind} on {layer}", leave=False):
        train, test = split_rows(splits, image_ids, n_train, split_index)
        probe = fit_probe(X[train], y[train], config)
        if short_of_optimum(probe, config.c_grid):
            edge.append(probe.c)
        rows.append(
            run_row(
                y[test], probe.predict(X[test]), n_classes, method=method, layer=layer, classifier=config.kind,
                n_train=n_train, split_index=split_index, n_train_images=len(train), c=probe.c,
                cv_accuracy=probe.cv_accuracy.get(probe.c, float("nan")), converged=probe.converged,
            )
        )
        log.info("%s %s n_train=%d split %d: %.2f%% (C=%g)", config.kind, layer, n_train, split_index,
                 rows[-1]["accuracy"], probe.c)
    if edge:
        log.warning("%s on %s: C at the edge of the grid %s, its cross-validated accuracy rising on every fold, "
                    "on %d of %d splits (C=%s): consider a wider c_grid", config.kind, layer, list(config.c_grid),
                    len(edge), len(rows), sorted(set(edge)))
    return pa.Table.from_pylist(rows, schema=RUN_SCHEMA)


def short_of_optimum(probe: Probe, c_grid: Sequence[float]) -> bool:
    """True when cross-validation chose a C at an end of the grid that beats the next C inward on every fold,
    by more than :data:`EDGE_MARGIN` on average: the optimum may lie beyond the grid. Otherwise the end sits
    on a plateau, within the folds' noise (weak regularization of L2-normalized features often does), where
    a wider grid would not help."""
    grid = sorted(c_grid)
    if len(grid) < 2 or probe.c not in (grid[0], grid[-1]) or not probe.cv_fold_accuracy:
        return False
    inner = grid[1] if probe.c == grid[0] else grid[-2]
    gains = np.subtract(probe.cv_fold_accuracy[probe.c], probe.cv_fold_accuracy[inner])
    return bool((gains > 0).all() and gains.mean() > EDGE_MARGIN)


def run_row(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    *,
    method: str,
    layer: str,
    classifier: str,
    n_train: int,
    split_index: int,
    n_train_images: int,
    c: float = float("nan"),
    cv_accuracy: float = float("nan"),
    converged: bool = True,
) -> dict:
    """One :data:`RUN_SCHEMA` row from a split's test predictions; also how to score a classifier trained
    elsewhere, e.g. the non-pretrained net of Tables 4-5 (``method='non-pretrained'``, ``layer='fc8'``)."""
    per_class = per_class_accuracy(confusion_matrix(y_true, y_pred, n_classes))
    return {
        "method": method, "layer": layer, "classifier": classifier, "n_train": n_train,
        "split_index": split_index, "n_train_images": n_train_images, "n_test_images": len(y_true),
        "accuracy": float(np.nanmean(per_class)), "per_class_accuracy": per_class.tolist(),
        "c": c, "cv_accuracy": cv_accuracy, "converged": converged,
    }


def voc_training_samples(labels: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Single-label samples for the paper's 20-way softmax from multi-label images.

    Each image contributes one sample per class it holds (the same features, each positive label once),
    so the softmax learns every object present; images without a label are dropped.
    Returns ``(row, label)``: the image's row index and the sample's label.
    """
    rows = np.array([i for i, image_labels in enumerate(labels) for _ in set(image_labels)], dtype=np.int64)
    targets = np.array([c for image_labels in labels for c in sorted(set(image_labels))], dtype=np.int64)
    return rows, targets


def multi_hot(labels: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """``[N, n_classes]`` bool: does image i hold class c."""
    targets = np.zeros((len(labels), n_classes), dtype=bool)
    for i, image_labels in enumerate(labels):
        targets[i, list(image_labels)] = True
    return targets


def evaluate_voc(
    X_train: np.ndarray,
    labels_train: Sequence[Sequence[int]],
    X_val: np.ndarray,
    labels_val: Sequence[Sequence[int]],
    config: ProbeConfig,
    *,
    difficult_val: Sequence[Sequence[int]] | None = None,
    class_names: Sequence[str] = VOC_CLASSES,
) -> pa.Table:
    """Table 6 protocol: a softmax on the train images, average precision per class on the val images.

    Training uses :func:`voc_training_samples`; cross-validation keeps the samples of one image in one fold.
    Each class's AP ranks the val images by that class's softmax probability against the images that
    hold it, leaving out images that hold it only as "difficult" (``difficult_val``, as VOC does).
    Returns one row per class: class, ap (%), n_val_positive, the chosen C and convergence.
    """
    if config.kind != "softmax":
        raise ValueError("Table 6 uses a softmax probe (ProbeConfig(kind='softmax'))")
    n_classes = len(class_names)
    rows, targets = voc_training_samples(labels_train)
    missing = sorted(set(range(n_classes)) - set(targets.tolist()))
    if missing:
        raise ValueError(f"no training image holds classes {[class_names[c] for c in missing]}")
    probe = fit_probe(np.asarray(X_train, dtype=np.float32)[rows], targets, config, groups=rows)
    probabilities = probe.predict_proba(np.asarray(X_val, dtype=np.float32))
    positives = multi_hot(labels_val, n_classes)
    ignored = np.zeros_like(positives)
    if difficult_val is not None:
        ignored = multi_hot(difficult_val, n_classes) & ~positives
    ap = [average_precision(probabilities[:, c], positives[:, c], ignored[:, c]) for c in range(n_classes)]
    log.info("VOC softmax: mean AP %.2f%% over %d classes (C=%g)", float(np.mean(ap)), n_classes, probe.c)
    return pa.table(
        {
            "class": list(class_names),
            "ap": ap,
            "n_val_positive": positives.sum(axis=0).astype(np.int32),
            "c": [probe.c] * n_classes,
            "converged": [probe.converged] * n_classes,
        }
    )


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
