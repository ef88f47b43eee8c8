"""The generated demo dataset: procedurally drawn images in the ImageNet and Caltech-101 layouts.

With no real dataset configured the pipeline runs end to end on this. Every image is one object
drawn over clutter; classes differ in the object's SHAPE (disc, square, triangle, cross, star,
ring, hexagon, face), its TEXTURE (solid, stripes at an orientation, checker, dots) and its COLOUR.
Position, scale, rotation, colour, background (gradient + low-frequency noise), distractors
(lines, outlines, small blobs) and pixel noise are jittered, so a linear classifier on raw pixels
does poorly while a small convnet has to learn oriented edges, colour and shape.

The SOURCE set (ImageNet layout, synset-like ids 'n900000NN') and the TARGET set (Caltech-101
layout) share the primitives but not the classes: target classes are new combinations (a blue
square where the source has a red one and a blue disc) and new shapes (star, ring, hexagon), so
transfer from source features to the target is measurable.

The source 'face' class (a disc with two eyes, a nose and a mouth) stands in for the paper's dog
faces in the correspondence analysis (Section 4.4, Table 3): ``correspondence.json`` lists 5
face images with the pixel boxes of their right eye, left eye and nose. 'right eye' is the face's
own right eye, on the image's left (as in docs/table3_parts_imagenette.json).

Every image is drawn from its own random stream seeded by (seed, split, class, index), so the
output is byte-identical for a seed, whatever the number of worker processes. This module holds the
classes and the layout on disk; :mod:`zf_pipeline.data.demo_drawing` draws the images.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path

import numpy as np
from tqdm import tqdm

from zf_pipeline.data.demo_drawing import DemoClass, Drawing, draw_image
from zf_pipeline.io import write_bytes_atomic

log = logging.getLogger(__name__)

# Bump when drawing changes: a demo folder made by another version is rebuilt.
GENERATOR_VERSION = 1
MARKER = "DEMO_COMPLETE.json"
PARTS = ("right_eye", "left_eye", "nose")
CORRESPONDENCE_IMAGES = 5

SOURCE_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("n90000001", "red disc", "disc", "solid", "red"),
    DemoClass("n90000002", "blue disc", "disc", "solid", "blue"),
    DemoClass("n90000003", "red square", "square", "solid", "red"),
    DemoClass("n90000004", "green triangle", "triangle", "solid", "green"),
    DemoClass("n90000005", "yellow cross", "cross", "solid", "yellow"),
    DemoClass("n90000006", "horizontally striped disc", "disc", "hstripes"),
    DemoClass("n90000007", "vertically striped disc", "disc", "vstripes"),
    DemoClass("n90000008", "checkered square", "square", "checker"),
    DemoClass("n90000009", "dotted square", "square", "dots"),
    DemoClass("n90000010", "face", "face"),
)
TARGET_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("blue_square", "blue square", "square", "solid", "blue"),
    DemoClass("green_disc", "green disc", "disc", "solid", "green"),
    DemoClass("red_triangle", "red triangle", "triangle", "solid", "red"),
    DemoClass("yellow_star", "yellow star", "star", "solid", "yellow"),
    DemoClass("ring", "ring", "ring", "solid"),
    DemoClass("hexagon", "hexagon", "hexagon", "solid"),
    DemoClass("diagonal_striped_square", "diagonally striped square", "square", "dstripes"),
    DemoClass("checkered_disc", "checkered disc", "disc", "checker"),
    DemoClass("dotted_triangle", "dotted triangle", "triangle", "dots"),
    DemoClass("vertically_striped_cross", "vertically striped cross", "cross", "vstripes"),
)
FACE_CLASS = SOURCE_CLASSES[-1]


@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the demo's bytes (recorded in the completion marker)."""

    seed: int = 0
    image_size: int = 128
    train_per_class: int = 200
    val_per_class: int = 50
    target_per_class: int = 60
    jpeg_quality: int = 90
    version: int = GENERATOR_VERSION


@dataclass(frozen=True)
class DemoPaths:
    """Where the parts of a generated demo live."""

    root: Path
    source: Path  # ImageNet layout: train/<synset>/*.JPEG, val/<synset>/*.JPEG, LOC_synset_mapping.txt
    source_names: Path  # '<synset> <human name>' per line, sorted by synset
    target: Path  # holds 101_ObjectCategories/<class>/image_NNNN.jpg
    target_categories: Path  # target / '101_ObjectCategories'
    correspondence: Path  # Table 3 parts: 5 face images and their part boxes


def demo_paths(root: Path) -> DemoPaths:
    """The paths of a demo rooted at ``root`` (whether or not it has been generated)."""
    root = Path(root)
    return DemoPaths(
        root=root,
        source=root / "source",
        source_names=root / "source" / "LOC_synset_mapping.txt",
        target=root / "target",
        target_categories=root / "target" / "101_ObjectCategories",
        correspondence=root / "correspondence.json",
    )


# --------------------------------------------------------------------------------------------
# The dataset on disk

_SPLIT_CODE = {"train": 0, "val": 1, "target": 2}


@dataclass(frozen=True)
class _Job:
    """One image to draw and where it goes."""

    split: str
    class_index: int
    index: int
    path: str


def _rng(seed: int, job: _Job) -> np.random.Generator:
    # Its own stream per image: the bytes do not depend on worker count or order.
    return np.random.default_rng([seed, _SPLIT_CODE[job.split], job.class_index, job.index])


def _job_class(job: _Job) -> DemoClass:
    return (TARGET_CLASSES if job.split == "target" else SOURCE_CLASSES)[job.class_index]


def _draw_job(job: _Job, config: DemoConfig) -> Drawing:
    return draw_image(_job_class(job), config.image_size, _rng(config.seed, job))


def _write_chunk(jobs: list[_Job], config: DemoConfig) -> int:
    """Draw and save a chunk of images (runs in a worker process)."""
    for job in jobs:
        buf = io.BytesIO()
        _draw_job(job, config).image.save(buf, format="JPEG", quality=config.jpeg_quality)
        write_bytes_atomic(job.path, buf.getvalue())
    return len(jobs)


def _pool_context() -> BaseContext:
    """fork where it is safe (Linux, no other Python thread): it starts at once and needs no
    ``if __name__ == "__main__"`` guard in the caller's script. Otherwise spawn: a thread of the
    caller (Dagster, a notebook kernel) could hold a lock that a forked child would inherit held.
    tqdm's monitor thread only sleeps and updates bars, which the children never touch."""
    harmless = (threading.main_thread(), getattr(tqdm, "monitor", None))
    if sys.platform.startswith("linux") and all(t in harmless for t in threading.enumerate()):
        return get_context("fork")
    return get_context("spawn")


def _jobs(paths: DemoPaths, config: DemoConfig) -> list[_Job]:
    jobs = []
    for c, cls in enumerate(SOURCE_CLASSES):
        train_dir, val_dir = paths.source / "train" / cls.class_id, paths.source / "val" / cls.class_id
        jobs += [_Job("train", c, i, str(train_dir / f"{cls.class_id}_{i + 1}.JPEG"))
                 for i in range(config.train_per_class)]
        # ImageNet's val names are global over the set: ILSVRC2012_val_00000001.JPEG, ...
        first = c * config.val_per_class + 1
        val_names = [f"ILSVRC2012_val_{first + i:08d}.JPEG" for i in range(config.val_per_class)]
        jobs += [_Job("val", c, i, str(val_dir / name)) for i, name in enumerate(val_names)]
    for c, cls in enumerate(TARGET_CLASSES):
        folder = paths.target_categories / cls.class_id
        jobs += [_Job("target", c, i, str(folder / f"image_{i + 1:04d}.jpg")) for i in range(config.target_per_class)]
    return jobs


def _correspondence(paths: DemoPaths, config: DemoConfig) -> dict:
    """Table 3's part boxes for the first 5 validation faces (held out from training)."""
    face_index = SOURCE_CLASSES.index(FACE_CLASS)
    jobs = [j for j in _jobs(paths, config) if j.split == "val" and j.class_index == face_index][:CORRESPONDENCE_IMAGES]
    images = []
    for job in jobs:
        drawing = _draw_job(job, config)
        images.append(
            {
                "path": Path(job.path).relative_to(paths.root).as_posix(),
                "class_id": FACE_CLASS.class_id,
                "parts": {k: list(drawing.parts[k]) for k in PARTS},
                "object": list(drawing.object_box),
            }
        )
    return {
        "description": "Part boxes (x0, y0, x1, y1; pixels of the stored image, x1/y1 exclusive) for Table 3. "
        "'right_eye' is the face's own right eye, on the image's left.",
        "image_size": config.image_size,
        "parts": list(PARTS),
        "images": images,
    }


def _read_marker(paths: DemoPaths) -> dict | None:
    try:
        return json.loads((paths.root / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def make_demo(
    root: Path,
    seed: int = 0,
    *,
    image_size: int = 128,
    train_per_class: int = 200,
    val_per_class: int = 50,
    target_per_class: int = 60,
    jpeg_quality: int = 90,
    workers: int | None = None,
) -> DemoPaths:
    """Generate the demo dataset under ``root`` unless a complete one with the same settings is there.

    Idempotent: a completion marker is written last (atomically); a folder without it (a killed
    run) or made with other settings is rebuilt. Deterministic from ``seed``; never downloads.
    ``workers`` processes draw the images (default: all cores).
    """
    config = DemoConfig(seed, image_size, train_per_class, val_per_class, target_per_class, jpeg_quality)
    for name, value in asdict(config).items():
        if not isinstance(value, int) or value < (0 if name == "seed" else 1):
            kind = "non-negative" if name == "seed" else "positive"
            raise ValueError(f"make_demo: {name} must be a {kind} integer, got {value!r}")
    if image_size < 32:
        raise ValueError(f"make_demo: image_size must be at least 32 pixels, got {image_size}")
    if val_per_class < CORRESPONDENCE_IMAGES:
        raise ValueError(f"make_demo: val_per_class must be at least {CORRESPONDENCE_IMAGES} "
                         "(Table 3 uses 5 val faces)")
    paths = demo_paths(root)
    if paths.root.exists() and not paths.root.is_dir():
        raise NotADirectoryError(f"demo root {paths.root} is a file; "
                                 "expected a folder (or no path) for the demo dataset")
    marker = _read_marker(paths)
    if marker == asdict(config):
        return paths
    if marker is None and paths.source.exists():
        log.info("demo at %s is incomplete (no %s): rebuilding", paths.root, MARKER)
    elif marker is not None:
        log.info("demo at %s was made with %s; rebuilding with %s", paths.root, marker, asdict(config))

    # Remove only what the demo writes: the root may hold other things.
    (paths.root / MARKER).unlink(missing_ok=True)
    for folder in (paths.source, paths.target):
        shutil.rmtree(folder, ignore_errors=True)
    paths.correspondence.unlink(missing_ok=True)

    jobs = _jobs(paths, config)
    for folder in sorted({str(Path(j.path).parent) for j in jobs}):
        Path(folder).mkdir(parents=True, exist_ok=True)
    names = "".join(f"{c.class_id} {c.name}\n" for c in sorted(SOURCE_CLASSES, key=lambda c: c.class_id))
    write_bytes_atomic(paths.source_names, names.encode())

    chunks = [jobs[k : k + 25] for k in range(0, len(jobs), 25)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    log.info("drawing %d demo images into %s with %d process(es)", len(jobs), paths.root, workers)
    with tqdm(total=len(jobs), desc="demo images", unit="img", disable=None) as bar:
        if workers == 1:
            for chunk in chunks:
                bar.update(_write_chunk(chunk, config))
        else:
            with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
                for done in pool.map(_write_chunk, chunks, [config] * len(chunks)):
                    bar.update(done)

    write_bytes_atomic(paths.correspondence, json.dumps(_correspondence(paths, config), indent=1).encode())
    write_bytes_atomic(paths.root / MARKER, json.dumps(asdict(config)).encode())
    log.info("demo dataset ready at %s", paths.root)
    return paths
