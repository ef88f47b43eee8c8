"""The scores of section 5: mean of per-class accuracies (Caltech) and average precision (PASCAL VOC)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]`` as an int64 ``[n_classes, n_classes]`` matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} holds labels outside [0, {n_classes})")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class in percent; NaN for a class with no test image."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.diag(confusion) / totals


def mean_per_class_accuracy(confusion: np.ndarray) -> float:
    """The paper's Caltech score: the average of per-class accuracies (percent), over classes with test images.

    Unlike plain accuracy it weighs every class equally, whatever its number of test images.
    """
    accuracies = per_class_accuracy(confusion)
    if np.isnan(accuracies).all():
        raise ValueError("the confusion matrix has no test images")
    return float(np.nanmean(accuracies))


def mean_per_class_accuracy_from_predictions(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """:func:`mean_per_class_accuracy` of the confusion of ``y_true`` against ``y_pred``."""
    return mean_per_class_accuracy(confusion_matrix(y_true, y_pred, n_classes))


def average_precision(scores: np.ndarray, positive: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """VOC 2010+ average precision (percent) of one class: area under the precision-recall curve
    with precision made monotone (each recall level takes the best precision at any higher recall).

    ``scores`` ranks the images (higher = more confident); ``positive`` marks the images holding the class;
    ``ignore`` marks images left out of the ranking (VOC's "difficult"-only images of the class).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        scores, positive = scores[keep], positive[keep]
    n_positive = int(positive.sum())
    if n_positive == 0:
        raise ValueError("average precision needs at least one positive image")
    hits = positive[np.argsort(-scores, kind="stable")]
    true_pos = np.cumsum(hits)
    precision = true_pos / np.arange(1, hits.size + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    # Sum precision over the recall steps, which happen exactly at the positive images.
    return float(100.0 * np.sum(envelope[hits]) / n_positive)
