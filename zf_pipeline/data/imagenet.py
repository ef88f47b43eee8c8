"""ImageNet (ILSVRC-2012) in the layouts it is downloaded or unpacked in.

Class index = position of the synset in sorted order (torchvision's convention), taken from the
train split whenever it is on disk, so a synset has the same index in train and val. A copy without
train takes the full list of the devkit, LOC_synset_mapping.txt or the built-in 1,000-synset table, so
a val subset keeps the ILSVRC indices a 1,000-way model predicts. Image ids are
``<wnid>/<file stem>`` in every layout, so an image keeps its id whether read from a folder or a tar.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from zf_pipeline.data.folders import image_files, is_image_name, layout_error, sorted_unique, stem, subfolders
from zf_pipeline.data.records import ImageRecord, ImageSet, tar_members, tar_source

log = logging.getLogger(__name__)

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt"
META = f"{DEVKIT}/data/meta.mat"
LOC_SYNSET_MAPPING = "LOC_synset_mapping.txt"
# The 1,000 ILSVRC-2012 synsets' WordNet words, as in the devkit's meta.mat, for copies that ship
# neither (Imagenette, a bare train folder). From timm's imagenet_synsets.txt + synset_to_lemma (Apache-2.0).
BUILTIN_SYNSETS = Path(__file__).with_name("ilsvrc2012_synsets.tsv")
KAGGLE_SPLITS = "ILSVRC/Data/CLS-LOC"  # Kaggle's ImageNet: train/ and val/ under this, labels beside it
KAGGLE_VAL_SOLUTION = "LOC_val_solution.csv"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.\w+$")

TREE = f"""\
  <root>/
    train/n01440764/n01440764_10026.JPEG   one folder per synset (or per-class tars: train/n01440764.tar)
    {TRAIN_TAR}             or the official tar of per-class tars (n01440764.tar, ...)
    val/n01440764/ILSVRC2012_val_00000293.JPEG   one folder per synset, or flat:
    val/ILSVRC2012_val_00000001.JPEG       (or {VAL_TAR}) labelled by the devkit:
    {GROUND_TRUTH}
    {META}   (the devkit may also stay packed: {DEVKIT}.tar.gz)
    {LOC_SYNSET_MAPPING}                 optional names, 'n01440764 tench, Tinca tinca' per line
  or Kaggle's: <root>/{KAGGLE_SPLITS}/{{train,val}}/ with <root>/{KAGGLE_VAL_SOLUTION} labelling a flat val
"""
SPLITS = ("train", "val")


@dataclass(frozen=True)
class _Located:
    """Where one split's images are and how they are laid out."""

    layout: str  # 'folders' | 'class-tars' | 'tar-of-tars' | 'flat' | 'flat-tar'
    path: Path


def _locate(root: Path, split: str) -> _Located | None:
    kaggle = root / KAGGLE_SPLITS
    folder = (kaggle if kaggle.is_dir() else root) / split
    if folder.is_dir():
        if subfolders(folder):
            return _Located("folders", folder)
        with os.scandir(folder) as entries:
            names = [e.name for e in entries]
        if split == "train" and any(n.endswith(".tar") for n in names):
            return _Located("class-tars", folder)
        if split == "train" and any(is_image_name(n) for n in names):
            raise layout_error("ImageNet train", folder, "it holds images but no class folders: a train image's "
                               "class is its folder's synset, train/<wnid>/<image>.JPEG", TREE)
        if split == "val" and any(VAL_NAME.match(n) for n in names):
            return _Located("flat", folder)
    packed = root / (TRAIN_TAR if split == "train" else VAL_TAR)
    if packed.is_file():
        return _Located("tar-of-tars" if split == "train" else "flat-tar", packed)
    return None


def _class_tars(where: _Located) -> list[str]:
    """Per-class tar names ('n01440764.tar'), sorted, from a folder or from the outer train tar."""
    if where.layout == "class-tars":
        with os.scandir(where.path) as entries:
            return sorted(e.name for e in entries if e.name.endswith(".tar") and not e.name.startswith("."))
    return sorted(n for n in tar_members(where.path) if n.endswith(".tar"))


def _train_synsets(train: _Located) -> list[str]:
    """The train split's synsets, sorted: its class folders or per-class tars, without listing their images."""
    if train.layout == "folders":
        return subfolders(train.path)
    return [n.removesuffix(".tar") for n in _class_tars(train)]


def _images(where: _Located, root: Path) -> list[tuple[str, str, str]]:
    """(wnid, file name, source) of every image of a split."""
    if where.layout == "folders":
        out = []
        for wnid in subfolders(where.path):
            base = os.path.join(where.path, wnid)
            out.extend((wnid, n, os.path.join(base, n)) for n in image_files(where.path / wnid))
        return out
    if where.layout in ("class-tars", "tar-of-tars"):
        out = []
        for inner in _class_tars(where):
            if where.layout == "class-tars":
                path, chain = where.path / inner, ()
            else:
                path, chain = where.path, (inner,)
            wnid = inner.removesuffix(".tar")
            out.extend(
                (wnid, n, tar_source(path, *chain, n))
                for n in tar_members(path, *chain)
                if is_image_name(os.path.basename(n))
            )
        return out
    if where.layout == "flat":
        names = image_files(where.path)
        sources = [os.path.join(where.path, n) for n in names]
    else:
        names = [n for n in tar_members(where.path) if is_image_name(os.path.basename(n))]  # members may be ./x.JPEG
        sources = [tar_source(where.path, n) for n in names]
    labels = _val_ground_truth(root)
    out = []
    for name, source in zip(names, sources, strict=True):
        match = VAL_NAME.match(os.path.basename(name))
        if not match:
            raise layout_error("ImageNet val", source, "a flat val image must be named ILSVRC2012_val_NNNNNNNN", TREE)
        number = int(match.group(1))
        if number not in labels:
            raise layout_error("ImageNet val", source, "the ground truth has no label for it", TREE)
        out.append((labels[number], name, source))
    return out


def _devkit_file(root: Path, member: str) -> bytes | None:
    """A devkit file from the unpacked devkit folder, else from the devkit's .tar.gz; None when neither has it."""
    unpacked = root / member
    if unpacked.is_file():
        return unpacked.read_bytes()
    packed = root / f"{DEVKIT}.tar.gz"
    if packed.is_file():
        with tarfile.open(packed, "r:gz") as tar:
            try:
                return tar.extractfile(member).read()  # type: ignore[union-attr]
            except KeyError:
                return None
    return None


def _read_meta(data: bytes, where: str, leaves: bool = False) -> dict[int, tuple[str, str]]:
    """meta.mat: ILSVRC2012_ID -> (WNID, words) for every synset in its ``synsets`` struct array (with
    ``leaves``, only the classes: synsets without children)."""
    import numpy as np
    import scipy.io

    try:
        synsets = np.atleast_1d(scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"])
        return {int(s["ILSVRC2012_ID"]): (str(s["WNID"]), str(s["words"]))
                for s in synsets if not leaves or int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError) as e:
        raise layout_error(
            "ImageNet devkit",
            where,
            f"meta.mat has no 'synsets' struct array with ILSVRC2012_ID, WNID, words, num_children ({e})",
            TREE,
        ) from e


def _val_ground_truth(root: Path) -> dict[int, str]:
    """Val image number (1-based, as in its file name) -> synset, from the devkit or Kaggle's solution file."""
    truth, meta = _devkit_file(root, GROUND_TRUTH), _devkit_file(root, META)
    if truth is not None and meta is not None:
        synsets = _read_meta(meta, str(root / META))
        ids = [int(line) for line in truth.decode().split()]
        unknown = sorted(set(ids) - synsets.keys())
        if unknown:
            raise layout_error(
                "ImageNet devkit", root / GROUND_TRUTH, f"ILSVRC2012 ids {unknown[:5]} are not in meta.mat", TREE
            )
        return {number: synsets[i][0] for number, i in enumerate(ids, 1)}
    solution = root / KAGGLE_VAL_SOLUTION
    if solution.is_file():
        # 'ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...': the first word of the boxes is the synset.
        with open(solution, newline="") as f:
            try:
                return {int(row["ImageId"][-8:]): row["PredictionString"].split()[0] for row in csv.DictReader(f)}
            except (KeyError, ValueError, IndexError, AttributeError) as e:
                expected = "'ImageId,PredictionString' rows such as 'ILSVRC2012_val_00000001,n01751748 ...'"
                raise layout_error("ImageNet val", solution, f"expected {expected} ({e!r})", TREE) from e
    raise layout_error(
        "ImageNet val",
        root,
        f"flat val images need the devkit ({GROUND_TRUTH} and {META}) or {KAGGLE_VAL_SOLUTION} to be labelled",
        TREE,
    )


def synset_names(root: str | os.PathLike) -> dict[str, str]:
    """wnid -> words ('tench, Tinca tinca') from the devkit's meta.mat, else LOC_synset_mapping.txt, else
    the built-in table of the 1,000 ILSVRC-2012 synsets (other wnids keep their id as their name)."""
    root = Path(root)
    meta = _devkit_file(root, META)
    if meta is not None:
        return {wnid: words for wnid, words in _read_meta(meta, str(root / META)).values()}
    mapping = root / LOC_SYNSET_MAPPING
    if mapping.is_file():
        pairs = (line.split(maxsplit=1) for line in mapping.read_text().splitlines() if line.strip())
        return {p[0]: p[1] if len(p) > 1 else p[0] for p in pairs}
    return dict(line.split("\t", 1) for line in BUILTIN_SYNSETS.read_text().splitlines())


def _all_synsets(root: Path) -> tuple[list[str], str]:
    """Every class of ILSVRC-2012, sorted, and where the list came from: the devkit's meta.mat (its leaf
    synsets), else LOC_synset_mapping.txt, else the built-in table."""
    meta = _devkit_file(root, META)
    if meta is not None:
        return sorted(wnid for wnid, _ in _read_meta(meta, str(root / META), leaves=True).values()), "meta.mat"
    listed_in = LOC_SYNSET_MAPPING if (root / LOC_SYNSET_MAPPING).is_file() else "built-in ILSVRC-2012"
    return sorted(synset_names(root)), listed_in


def read_imagenet(root: str | os.PathLike, split: str = "train") -> ImageSet:
    """ImageNet's ``split`` ('train' or 'val') under ``root``, in any of the layouts of ``TREE``."""
    root = Path(root).absolute()
    if split not in SPLITS:
        raise ValueError(f"ImageNet split must be one of {SPLITS}, got {split!r}")
    if not root.is_dir():
        raise layout_error("ImageNet", root, "no such folder", TREE)
    where = _locate(root, split)
    if where is None:
        raise layout_error("ImageNet", root, f"found no {split} split in any known layout", TREE)
    images = _images(where, root)
    train = where if split == "train" else _locate(root, "train")
    classes, listed_in = (_train_synsets(train), "train") if train else _all_synsets(root)
    index = {wnid: i for i, wnid in enumerate(classes)}
    for wnid, _, source in images:
        if wnid not in index:
            raise layout_error(
                "ImageNet", source, f"synset {wnid} is not among the {len(classes)} {listed_in} synsets", TREE
            )
    records = [ImageRecord(f"{wnid}/{stem(os.path.basename(n))}", src, index[wnid], wnid) for wnid, n, src in images]
    if not records:
        raise layout_error("ImageNet", where.path, f"the {split} split has no images", TREE)
    names = synset_names(root)
    log.info(
        "imagenet %s: %d images in %d classes (%s layout, %s)",
        split,
        len(records),
        len(classes),
        where.layout,
        where.path,
    )
    return ImageSet(
        name="imagenet",
        root=root,
        split=split,
        classes=classes,
        class_names=[names.get(c, c) for c in classes],
        records=sorted_unique(records, where.path),
    )
