"""Builders that write tiny datasets in the real on-disk layouts (real JPEGs made by PIL), for tests.

Each ``write_*`` returns the root to hand to ``open_imageset``. Image bytes are a pure function of
the image's key (``jpeg_bytes(key)``), so a test can predict the bytes of any image it asked for.
Import from tests as ``from layouts import write_imagenet_train, ...``.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# A few real ILSVRC-2012 synsets with their devkit words.
IMAGENET_SYNSETS: dict[str, str] = {
    "n01440764": "tench, Tinca tinca",
    "n01443537": "goldfish, Carassius auratus",
    "n02102040": "English springer, English springer spaniel",
}
CALTECH101_CLASSES = ("Faces", "accordion", "airplanes")  # 'Faces' sorts before the lower-case names
CALTECH256_CLASSES = ("001.ak47", "002.american-flag", "010.beer-mug")


def jpeg_bytes(key: str, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    """A tiny real JPEG whose pixels are a pure function of ``key`` (distinct keys give distinct bytes)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(key: str, size: tuple[int, int] = (8, 8)) -> bytes:
    """A tiny real PNG (ImageNet holds PNGs named .JPEG), a pure function of ``key``."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes(key, size))).save(buf, "PNG")
    return buf.getvalue()


def write_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path``, making its folders; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tar_bytes(members: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar of ``members`` (name -> bytes), in the given order, deterministic."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def imagenet_train_names(synsets: Sequence[str], per_class: int) -> dict[str, list[str]]:
    """The train file names the builders use: ``<wnid>_<n>.JPEG`` with n = 1..per_class."""
    return {w: [f"{w}_{n}.JPEG" for n in range(1, per_class + 1)] for w in synsets}


def write_imagenet_train(
    root: Path, synsets: Sequence[str] = tuple(IMAGENET_SYNSETS), per_class: int = 3, layout: str = "folders"
) -> Path:
    """ImageNet train under ``root``; image ``<wnid>/<wnid>_<n>`` has bytes ``jpeg_bytes('<wnid>/<wnid>_<n>')``.

    ``layout``: 'folders' (train/<wnid>/*.JPEG), 'class-tars' (train/<wnid>.tar), or 'tar' (the official
    ILSVRC2012_img_train.tar of per-class tars). Synsets are written in reverse order, so a reader must sort.
    """
    names = imagenet_train_names(synsets, per_class)
    inner = {w: {n: jpeg_bytes(f"{w}/{n.rsplit('.', 1)[0]}") for n in names[w]} for w in reversed(list(synsets))}
    if layout == "folders":
        for w, files in inner.items():
            for n, data in files.items():
                write_file(root / "train" / w / n, data)
    elif layout == "class-tars":
        for w, files in inner.items():
            write_file(root / "train" / f"{w}.tar", tar_bytes(files))
    elif layout == "tar":
        write_file(root / "ILSVRC2012_img_train.tar", tar_bytes({f"{w}.tar": tar_bytes(f) for w, f in inner.items()}))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return root


def val_name(number: int) -> str:
    """ImageNet's val file name for image ``number`` (1-based)."""
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def write_imagenet_val(
    root: Path,
    val_synsets: Sequence[str],
    layout: str = "folders",
    names: Mapping[str, str] = IMAGENET_SYNSETS,
    packed_devkit: bool = False,
) -> Path:
    """ImageNet val under ``root``: image k (1-based) is of synset ``val_synsets[k-1]`` and has bytes
    ``jpeg_bytes('ILSVRC2012_val_<k:08d>')``.

    ``layout``: 'folders' (val/<wnid>/ILSVRC2012_val_*.JPEG), 'flat' (val/ILSVRC2012_val_*.JPEG) or 'tar'
    (ILSVRC2012_img_val.tar); the flat layouts come with the devkit (``write_imagenet_devkit``).
    """
    files = {val_name(k): jpeg_bytes(val_name(k).removesuffix(".JPEG")) for k in range(1, len(val_synsets) + 1)}
    if layout == "folders":
        for (n, data), w in zip(files.items(), val_synsets, strict=True):
            write_file(root / "val" / w / n, data)
        return root
    if layout == "flat":
        for n, data in files.items():
            write_file(root / "val" / n, data)
    elif layout == "tar":
        write_file(root / "ILSVRC2012_img_val.tar", tar_bytes(files))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return write_imagenet_devkit(
        root, {w: names.get(w, w) for w in sorted(set(val_synsets))}, val_synsets, packed_devkit
    )


def write_imagenet_devkit(
    root: Path, synsets: Mapping[str, str], val_synsets: Sequence[str], packed: bool = False
) -> Path:
    """The devkit's meta.mat and validation ground truth, as ILSVRC2012_devkit_t12/ (or its .tar.gz).

    meta.mat holds a ``synsets`` struct array shaped like the real one (ILSVRC2012_ID, WNID, words, gloss,
    num_children, children, wordnet_height, num_train_images). ILSVRC2012 ids run in reverse sorted-wnid
    order (the real ids are not in sorted-wnid order either) and two non-leaf synsets follow the leaves.
    """
    import scipy.io

    leaves = sorted(synsets, reverse=True)
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    rows = [
        (float(i), w, synsets[w], f"gloss of {w}", 0.0, np.zeros((1, 0)), 0.0, 1300.0) for i, w in enumerate(leaves, 1)
    ]
    rows += [
        (float(len(leaves) + 1), "n00001740", "entity", "the root", 1.0, np.array([[len(leaves) + 2.0]]), 18.0, 0.0),
        (
            float(len(leaves) + 2),
            "n00002137",
            "abstraction",
            "a concept",
            float(len(leaves)),
            np.arange(1.0, len(leaves) + 1)[None],
            17.0,
            0.0,
        ),
    ]
    table = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        table[i, 0] = row
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": table})
    ids = {w: i for i, w in enumerate(leaves, 1)}
    truth = "".join(f"{ids[w]}\n" for w in val_synsets).encode()
    files = {
        "ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth,
    }
    if packed:
        with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        for name, data in files.items():
            write_file(root / name, data)
    return root


def write_loc_synset_mapping(root: Path, synsets: Mapping[str, str] = IMAGENET_SYNSETS) -> Path:
    """Kaggle's LOC_synset_mapping.txt: 'n01440764 tench, Tinca tinca' per line, sorted by synset."""
    write_file(root / "LOC_synset_mapping.txt", "".join(f"{w} {synsets[w]}\n" for w in sorted(synsets)).encode())
    return root


def write_imagenet_kaggle(
    root: Path, val_synsets: Sequence[str], synsets: Mapping[str, str] = IMAGENET_SYNSETS, per_class: int = 3
) -> Path:
    """Kaggle's ImageNet: ``ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/ (flat)}`` beside ``LOC_val_solution.csv``
    (rows in reverse image order, boxes after each synset) and ``LOC_synset_mapping.txt``; returns ``root``.
    Bytes as ``write_imagenet_train`` and ``write_imagenet_val``."""
    splits = root / "ILSVRC" / "Data" / "CLS-LOC"
    write_imagenet_train(splits, tuple(synsets), per_class)
    for k in range(1, len(val_synsets) + 1):
        write_file(splits / "val" / val_name(k), jpeg_bytes(val_name(k).removesuffix(".JPEG")))
    rows = [f"{val_name(k).removesuffix('.JPEG')},{w} 1 2 30 40 {w} 5 6 70 80\n" for k, w in enumerate(val_synsets, 1)]
    write_file(root / "LOC_val_solution.csv", ("ImageId,PredictionString\n" + "".join(reversed(rows))).encode())
    return write_loc_synset_mapping(root, synsets)


def write_caltech101(
    root: Path, classes: Sequence[str] = CALTECH101_CLASSES, per_class: int = 3, background: bool = True
) -> Path:
    """``root/101_ObjectCategories/<class>/image_NNNN.jpg`` (+ ``BACKGROUND_Google``); returns ``root``.
    Image ``<class>/image_NNNN`` has bytes ``jpeg_bytes('<class>/image_NNNN')``."""
    for cls in [*classes, *(["BACKGROUND_Google"] if background else [])]:
        for n in range(1, per_class + 1):
            key = f"{cls}/image_{n:04d}"
            write_file(root / "101_ObjectCategories" / f"{key}.jpg", jpeg_bytes(key))
    return root


def write_caltech256(
    root: Path, classes: Sequence[str] = CALTECH256_CLASSES, per_class: int = 3, clutter: bool = True
) -> Path:
    """``root/256_ObjectCategories/NNN.name/NNN_NNNN.jpg`` (+ ``257.clutter``); returns ``root``."""
    for cls in [*classes, *(["257.clutter"] if clutter else [])]:
        number = cls.split(".", 1)[0]
        for n in range(1, per_class + 1):
            key = f"{cls}/{number}_{n:04d}"
            write_file(root / "256_ObjectCategories" / f"{key}.jpg", jpeg_bytes(key))
    return root


# split -> image id -> {class: flag}; classes not named are -1 (absent). 1 present, 0 difficult.
VOC_EXAMPLE: dict[str, dict[str, dict[str, int]]] = {
    "train": {
        "2008_000008": {"horse": 1, "person": 1},
        "2008_000015": {"bottle": 1},
        "2008_000019": {"dog": 1, "cat": 0},
    },
    "val": {
        "2008_000002": {"tvmonitor": 1},
        "2008_000003": {"train": 0},
    },
}


def write_voc2012(root: Path, splits: Mapping[str, Mapping[str, Mapping[str, int]]] = VOC_EXAMPLE) -> Path:
    """``root/VOCdevkit/VOC2012`` with JPEGImages and ImageSets/Main lists for each split and 'trainval'.

    ``splits``: split -> image id -> {class: flag}, as ``VOC_EXAMPLE``; returns ``root``.
    Image ``<id>`` has bytes ``jpeg_bytes(<id>)``.
    """
    from zf_pipeline.data.voc import VOC_CLASSES

    base = root / "VOCdevkit" / "VOC2012"
    all_splits = {**splits, "trainval": {i: f for s in ("train", "val") for i, f in splits.get(s, {}).items()}}
    for split, images in all_splits.items():
        for image_id in images:
            write_file(base / "JPEGImages" / f"{image_id}.jpg", jpeg_bytes(image_id))
        main = base / "ImageSets" / "Main"
        write_file(main / f"{split}.txt", "".join(f"{i}\n" for i in sorted(images)).encode())
        for cls in VOC_CLASSES:
            # VOC writes '1' with two spaces, '-1' with one: readers must split on whitespace.
            lines = "".join(f"{i} {images[i].get(cls, -1):2d}\n" for i in sorted(images))
            write_file(main / f"{cls}_{split}.txt", lines.encode())
    return root
