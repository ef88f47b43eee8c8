"""Caltech-101 and Caltech-256 in their original class-folder layouts.

Class index = sorted class-folder name (code-point order, as torchvision: 'Faces' before 'accordion';
Caltech-256's 'NNN.' prefixes keep its numeric order). Each dataset's background class
(``BACKGROUND_Google``, ``257.clutter``) is left out by default: the paper's protocol uses 101 / 256
object classes.
"""

from __future__ import annotations

import os
from pathlib import Path

from zf_pipeline.data.folders import layout_error, read_class_folders
from zf_pipeline.data.records import ImageSet

CALTECH101_TREE = """\
  <root>/                                  (or <root> is 101_ObjectCategories itself)
    101_ObjectCategories/
      accordion/image_0001.jpg             one folder per class
      airplanes/image_0001.jpg
      BACKGROUND_Google/image_0001.jpg     optional background class, left out unless asked for
"""
CALTECH256_TREE = """\
  <root>/                                  (or <root> is 256_ObjectCategories itself)
    256_ObjectCategories/
      001.ak47/001_0001.jpg                one folder per class, 'NNN.name'
      002.american-flag/002_0001.jpg
      257.clutter/257_0001.jpg             optional clutter class, left out unless asked for
"""


def _categories(root: Path, folder: str, what: str, tree: str) -> Path:
    """``root/folder``, or ``root`` itself when it is that folder."""
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder and root.is_dir():
        return root
    problem = "no such folder" if not root.is_dir() else f"no {folder}/ folder in it"
    raise layout_error(what, root, problem, tree)


def read_caltech101(root: str | os.PathLike, include_background: bool = False) -> ImageSet:
    """Caltech-101: 101 classes, plus ``BACKGROUND_Google`` when ``include_background``. Split 'all'."""
    root = Path(root).absolute()
    folder = _categories(root, "101_ObjectCategories", "Caltech-101", CALTECH101_TREE)
    return read_class_folders(
        folder,
        name="caltech101",
        split="all",
        root=root,
        exclude=() if include_background else ("BACKGROUND_Google",),
        what="Caltech-101",
        tree=CALTECH101_TREE,
    )


def read_caltech256(root: str | os.PathLike, include_background: bool = False) -> ImageSet:
    """Caltech-256: 256 classes, plus ``257.clutter`` when ``include_background``. Split 'all'.

    Class ids are the folder names ('001.ak47'); class names drop the number ('ak47').
    """
    root = Path(root).absolute()
    folder = _categories(root, "256_ObjectCategories", "Caltech-256", CALTECH256_TREE)
    return read_class_folders(
        folder,
        name="caltech256",
        split="all",
        root=root,
        exclude=() if include_background else ("257.clutter",),
        class_name=lambda c: c.split(".", 1)[-1],
        what="Caltech-256",
        tree=CALTECH256_TREE,
    )
