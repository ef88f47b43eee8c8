"""The class-folder layout (``root/<class>/<image>``) that ImageNet, Caltech and the demo data share.

Listing never decodes or stats an image: ``os.scandir`` and the file name are enough, so listing
ImageNet's 1.28M files takes seconds. Images are recognised by extension only (``IMAGE_EXTENSIONS``,
any case): a PNG or CMYK JPEG named ``.JPEG`` is still listed; the sharding stage converts or skips it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from zf_pipeline.data.records import DatasetLayoutError, ImageRecord, ImageSet

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def is_image_name(name: str) -> bool:
    """True for an image file name: an image extension, and not hidden (skips macOS '._x.jpg' forks)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def stem(name: str) -> str:
    """The file name without its extension (image ids carry no extension)."""
    return os.path.splitext(name)[0]


def layout_error(what: str, path: str | os.PathLike, problem: str, tree: str) -> DatasetLayoutError:
    """One error that names the path, says what is wrong, and shows the layout expected."""
    return DatasetLayoutError(f"{what} at {os.fspath(path)}: {problem}.\nExpected layout:\n{tree.rstrip()}")


def subfolders(path: Path) -> list[str]:
    """Names of the visible subfolders of ``path``, sorted (the class order: plain code-point order)."""
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def image_files(folder: Path) -> list[str]:
    """Names of the image files directly in ``folder`` (no recursion), sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if is_image_name(e.name) and not e.is_dir())


def sorted_unique(records: Iterable[ImageRecord], where: Path) -> list[ImageRecord]:
    """Records sorted by image_id; two images with one id (``a.jpg`` and ``a.png``) are a layout error."""
    out = sorted(records, key=lambda r: r.image_id)
    for a, b in zip(out, out[1:], strict=False):
        if a.image_id == b.image_id:
            raise DatasetLayoutError(f"{where}: two images share the id {a.image_id!r}: {a.source} and {b.source}")
    return out


def class_folder_records(folder: Path, classes: list[str]) -> list[ImageRecord]:
    """Records of ``folder/<class>/<image>`` for the given classes (label = position in ``classes``)."""
    records = []
    for label, cls in enumerate(classes):
        names = image_files(folder / cls)
        if not names:
            log.warning("%s: class folder has no images", folder / cls)
        base = os.path.join(folder, cls)
        records.extend(
            ImageRecord(image_id=f"{cls}/{stem(n)}", source=os.path.join(base, n), label=label, class_id=cls)
            for n in names
        )
    return records


def read_class_folders(
    folder: Path,
    *,
    name: str,
    split: str,
    root: Path,
    exclude: Iterable[str] = (),
    class_name: Callable[[str], str] = str,
    what: str,
    tree: str,
) -> ImageSet:
    """An ImageSet of ``folder/<class>/<image>``; classes are the sorted subfolders less ``exclude``."""
    if not folder.is_dir():
        raise layout_error(what, folder, "no such folder", tree)
    skip = set(exclude)
    classes = [c for c in subfolders(folder) if c not in skip]
    records = class_folder_records(folder, classes)
    if not records:
        raise layout_error(what, folder, "no class folders with images (.jpg/.jpeg/.png) in it", tree)
    log.info("%s %s: %d images in %d classes under %s", name, split, len(records), len(classes), folder)
    return ImageSet(
        name=name,
        root=root,
        split=split,
        classes=classes,
        class_names=[class_name(c) for c in classes],
        records=sorted_unique(records, folder),
    )


FOLDER_TREE = """\
  <root>/                      (or <root>/<split>/ when a split is named)
    <class_a>/img_0001.jpg     one folder per class; .jpg/.jpeg/.png, any case
    <class_b>/img_0002.png
"""


def read_folder(root: str | os.PathLike, split: str = "all") -> ImageSet:
    """A generic class-folder dataset: ``root/<split>/<class>/*`` if that split folder exists, else ``root/<class>/*``
    (only for ``split='all'``). Class index = sorted folder name."""
    root = Path(root).absolute()
    folder = root / split if (root / split).is_dir() else root
    if folder == root and split != "all":
        raise layout_error("class-folder dataset", root, f"no {split}/ folder", FOLDER_TREE)
    return read_class_folders(
        folder, name="folder", split=split, root=root, what="class-folder dataset", tree=FOLDER_TREE
    )
