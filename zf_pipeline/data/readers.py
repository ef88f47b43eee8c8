"""One entry point to every dataset reader: ``open_imageset(kind, root, split)``.

Layouts, and how to obtain each dataset: docs/datasets.md.
"""

from __future__ import annotations

import os

from zf_pipeline.data.caltech import read_caltech101, read_caltech256
from zf_pipeline.data.folders import read_folder
from zf_pipeline.data.imagenet import read_imagenet
from zf_pipeline.data.records import ImageSet
from zf_pipeline.data.voc import read_voc2012

# kind -> (split used when none is named, the splits it has)
KINDS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "imagenet": ("train", ("train", "val")),
    "caltech101": ("all", ("all",)),
    "caltech256": ("all", ("all",)),
    "voc2012": ("train", ("train", "val", "trainval")),
    "folder": ("all", None),  # any: root/<split>/ when it exists
}

# Environment variables naming each dataset's root (read by the Dagster layer, documented in docs/datasets.md).
ROOT_ENV = {
    "imagenet": "ZF_IMAGENET_ROOT",
    "caltech101": "ZF_CALTECH101_ROOT",
    "caltech256": "ZF_CALTECH256_ROOT",
    "voc2012": "ZF_VOC2012_ROOT",
}


def open_imageset(
    kind: str, root: str | os.PathLike, split: str | None = None, *, include_background: bool = False
) -> ImageSet:
    """List the images of one split of a dataset on disk; nothing is decoded.

    ``kind``: 'imagenet', 'caltech101', 'caltech256', 'voc2012' or 'folder' (root/<class>/<image>).
    ``split``: None for the kind's default ('train' or 'all'). ``include_background`` keeps Caltech's
    background class (BACKGROUND_Google, 257.clutter), left out by default as in the paper.
    Raises ``DatasetLayoutError`` naming the path and the layout expected when ``root`` does not fit.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(KINDS)}")
    default, splits = KINDS[kind]
    split = default if split is None else split
    if splits is not None and split not in splits:
        raise ValueError(f"{kind} has splits {splits}, got {split!r}")
    if kind == "imagenet":
        return read_imagenet(root, split)
    if kind == "caltech101":
        return read_caltech101(root, include_background)
    if kind == "caltech256":
        return read_caltech256(root, include_background)
    if kind == "voc2012":
        return read_voc2012(root, split)
    return read_folder(root, split)
