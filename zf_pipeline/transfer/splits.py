"""Seeded train/test splits of the Caltech protocols (section 5), as tables that trace every number to its images.

Caltech-101 (Fei-Fei et al., 2006) and Caltech-256 (Griffin et al., 2006): for each of ``n_splits`` random
splits, draw ``n_train`` training images per class and up to ``max_test`` test images per class from the
images left over. A split table has one row per (n_train, split_index, image) that takes part.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

SPLIT_SCHEMA = pa.schema(
    [
        ("n_train", pa.int32()),  # requested training images per class
        ("split_index", pa.int32()),
        ("image_id", pa.string()),
        ("label", pa.int32()),
        ("role", pa.string()),  # 'train' or 'test'
    ]
)

# Training images per class of each protocol (Fig. 7's default list; pass fewer on a small dataset).
TABLE4_N_TRAIN = (15, 30)
TABLE5_N_TRAIN = (15, 30, 45, 60)
FIG7_N_TRAIN = tuple(range(1, 61))

ShortClassPolicy = Literal["error", "use_available"]


class TooFewImagesError(ValueError):
    """A class has fewer images than the protocol asks for."""


def class_splits(
    image_ids: Sequence[str] | np.ndarray,
    labels: np.ndarray,
    n_train: int,
    *,
    max_test: int = 50,
    n_splits: int = 5,
    seed: int = 0,
    short_classes: ShortClassPolicy = "error",
    min_test: int = 1,
    class_names: Sequence[str] | None = None,
) -> pa.Table:
    """``n_splits`` random splits of ``n_train`` training and up to ``max_test`` test images per class.

    Split ``k`` depends only on ``(seed, n_train, k)`` and the set of images, not on their order.
    A class with fewer than ``n_train + min_test`` images raises :class:`TooFewImagesError` naming the
    class (by ``class_names[label]`` when given) and its count, unless ``short_classes='use_available'``:
    then it keeps ``min_test`` images for testing and trains on the rest (logged).
    """
    image_ids = np.asarray(image_ids, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    if image_ids.shape != labels.shape:
        raise ValueError(f"{image_ids.size} image ids but {labels.size} labels")
    if len(set(image_ids.tolist())) != image_ids.size:
        raise ValueError("image ids are not unique")
    if n_train < 1 or max_test < min_test or min_test < 1:
        raise ValueError(f"need n_train >= 1 and max_test >= min_test >= 1, got {n_train}, {max_test}, {min_test}")

    # Sort by id so that the split does not depend on the order the images were listed in.
    order = np.argsort(image_ids.astype(str), kind="stable")
    image_ids, labels = image_ids[order], labels[order]
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    short = {c: idx.size for c, idx in members.items() if idx.size < n_train + min_test}
    if short and short_classes == "error":
        named = ", ".join(
            f"class {class_names[c] if class_names else c}: {n} images" for c, n in sorted(short.items())[:10]
        )
        raise TooFewImagesError(
            f"{len(short)} classes have fewer than n_train + min_test = {n_train + min_test} images ({named}); "
            "pass short_classes='use_available' to train on what is there"
        )
    if short:
        log.warning("%d classes have fewer than %d images: training on what is left after %d test images",
                    len(short), n_train + min_test, min_test)

    columns: dict[str, list] = {name: [] for name in SPLIT_SCHEMA.names}
    for split_index in range(n_splits):
        rng = np.random.default_rng([seed, n_train, split_index])
        for c, idx in members.items():
            drawn = rng.permutation(idx)
            k = min(n_train, idx.size - min_test)
            for role, chosen in (("train", drawn[:k]), ("test", drawn[k : k + max_test])):
                columns["n_train"] += [n_train] * chosen.size
                columns["split_index"] += [split_index] * chosen.size
                columns["image_id"] += image_ids[chosen].tolist()
                columns["label"] += [int(c)] * chosen.size
                columns["role"] += [role] * chosen.size
    return pa.table(columns, schema=SPLIT_SCHEMA)


def protocol_splits(
    image_ids: Sequence[str] | np.ndarray, labels: np.ndarray, n_train_values: Sequence[int], **kwargs
) -> pa.Table:
    """:func:`class_splits` for each training size (e.g. :data:`TABLE4_N_TRAIN`, :data:`FIG7_N_TRAIN`) in one
    table; ``kwargs`` go to :func:`class_splits`."""
    return pa.concat_tables([class_splits(image_ids, labels, n, **kwargs) for n in n_train_values])


def one_split(splits: pa.Table, n_train: int, split_index: int) -> pa.Table:
    """The rows of one split of a split table."""
    return splits.filter(pc.and_(pc.equal(splits["n_train"], n_train), pc.equal(splits["split_index"], split_index)))


def split_keys(splits: pa.Table) -> list[tuple[int, int]]:
    """The ``(n_train, split_index)`` pairs of a split table, sorted."""
    return sorted(set(zip(splits["n_train"].to_pylist(), splits["split_index"].to_pylist())))


def split_rows(
    splits: pa.Table, image_ids: Sequence[str] | np.ndarray, n_train: int, split_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into ``image_ids`` (the feature matrix) of the training and test images of one split."""
    position = {image_id: i for i, image_id in enumerate(np.asarray(image_ids, dtype=object).tolist())}
    chosen = one_split(splits, n_train, split_index)
    if chosen.num_rows == 0:
        raise KeyError(f"the split table has no split n_train={n_train}, split_index={split_index}")
    ids, roles = chosen["image_id"].to_pylist(), chosen["role"].to_pylist()
    missing = [i for i in ids if i not in position]
    if missing:
        raise KeyError(f"{len(missing)} images of the split have no features, e.g. {missing[:3]}")
    rows = np.array([position[i] for i in ids], dtype=np.int64)
    is_train = np.array([r == "train" for r in roles])
    return rows[is_train], rows[~is_train]


def split_problems(splits: pa.Table) -> list[str]:
    """What is wrong with a split table (empty when all is well): overlapping train/test images,
    classes missing from a split's train or test side, splits that differ in the classes they hold."""
    problems: list[str] = []
    all_classes = set(splits["label"].to_pylist())
    for n_train, split_index in split_keys(splits):
        part = one_split(splits, n_train, split_index)
        by_role = {role: part.filter(pc.equal(part["role"], role)) for role in ("train", "test")}
        overlap = set(by_role["train"]["image_id"].to_pylist()) & set(by_role["test"]["image_id"].to_pylist())
        if overlap:
            problems.append(f"n_train={n_train} split {split_index}: {len(overlap)} images in both train and test")
        for role, table in by_role.items():
            missing = all_classes - set(table["label"].to_pylist())
            if missing:
                problems.append(
                    f"n_train={n_train} split {split_index}: classes {sorted(missing)[:10]} have no {role} image"
                )
    return problems
