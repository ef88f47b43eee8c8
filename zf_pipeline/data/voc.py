"""PASCAL VOC 2012 classification: JPEGImages plus the per-class ImageSets/Main lists, multi-label.

Each ``ImageSets/Main/<class>_<split>.txt`` line is ``<image id> <flag>``: 1 the class is present,
-1 absent, 0 present only as 'difficult' objects. VOC's classification protocol ignores difficult
entries (neither positive nor negative), so they go to ``ImageRecord.difficult``, not to ``labels``.
``labels`` holds the positive classes; ``label`` is the class when there is exactly one positive,
else -1: a single-class target is only claimed where the annotation gives one (a 20-way softmax,
Table 6, trains on ``labels``, e.g. as a normalised target distribution).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from zf_pipeline.data.folders import image_files, layout_error, stem
from zf_pipeline.data.records import ImageRecord, ImageSet

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
SPLITS = ("train", "val", "trainval")
TREE = """\
  <root>/                                  (or <root> is VOCdevkit/ or VOC2012/ itself)
    VOCdevkit/VOC2012/
      JPEGImages/2008_000008.jpg
      ImageSets/Main/aeroplane_train.txt   '2008_000008 -1' per line: 1 present, -1 absent, 0 difficult
      ImageSets/Main/aeroplane_val.txt     ... one pair per class, the 20 classes aeroplane ... tvmonitor
"""


def _voc2012(root: Path) -> Path:
    for base in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (base / "JPEGImages").is_dir() and (base / "ImageSets" / "Main").is_dir():
            return base
    problem = (
        "no such folder" if not root.is_dir() else "found no VOCdevkit/VOC2012 with JPEGImages/ and ImageSets/Main/"
    )
    raise layout_error("PASCAL VOC 2012", root, problem, TREE)


def _class_flags(path: Path) -> dict[str, int]:
    """image id -> flag (1, -1 or 0) of one ``<class>_<split>.txt``."""
    if not path.is_file():
        raise layout_error("PASCAL VOC 2012", path, "missing class list", TREE)
    flags = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
            raise layout_error(
                "PASCAL VOC 2012", f"{path}:{lineno}", f"expected '<image id> 1|-1|0', got {line!r}", TREE
            )
        flags[parts[0]] = int(parts[1])
    return flags


def read_voc2012(root: str | os.PathLike, split: str = "train") -> ImageSet:
    """VOC 2012 ``split`` ('train', 'val' or 'trainval'): one record per image, multi-label (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"VOC 2012 split must be one of {SPLITS}, got {split!r}")
    root = Path(root).absolute()
    base = _voc2012(root)
    main = base / "ImageSets" / "Main"
    flags = [_class_flags(main / f"{cls}_{split}.txt") for cls in VOC_CLASSES]
    ids = sorted(flags[0])
    for cls, class_flags in zip(VOC_CLASSES, flags, strict=True):
        if class_flags.keys() != flags[0].keys():
            other = main / f"{VOC_CLASSES[0]}_{split}.txt"
            raise layout_error("PASCAL VOC 2012", main / f"{cls}_{split}.txt", f"lists other images than {other}", TREE)
    jpegs = {stem(n): n for n in image_files(base / "JPEGImages")}
    records = []
    for image_id in ids:
        if image_id not in jpegs:
            raise layout_error(
                "PASCAL VOC 2012", base / "JPEGImages" / f"{image_id}.jpg", f"listed in {split} but missing", TREE
            )
        labels = tuple(c for c in range(len(VOC_CLASSES)) if flags[c][image_id] == 1)
        difficult = tuple(c for c in range(len(VOC_CLASSES)) if flags[c][image_id] == 0)
        records.append(
            ImageRecord(
                image_id=image_id,
                source=os.path.join(base, "JPEGImages", jpegs[image_id]),
                label=labels[0] if len(labels) == 1 else -1,
                class_id=VOC_CLASSES[labels[0]] if len(labels) == 1 else "",
                labels=labels,
                difficult=difficult,
            )
        )
    if not records:
        raise layout_error("PASCAL VOC 2012", main, f"the {split} lists are empty", TREE)
    log.info("voc2012 %s: %d images (%s)", split, len(records), base)
    return ImageSet("voc2012", root, split, list(VOC_CLASSES), list(VOC_CLASSES), records)
