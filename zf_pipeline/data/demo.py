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
output is byte-identical for a seed, whatever the number of worker processes.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from zf_pipeline.io import write_bytes_atomic

log = logging.getLogger(__name__)

# Bump when drawing changes: a demo folder made by another version is rebuilt.
GENERATOR_VERSION = 1
MARKER = "DEMO_COMPLETE.json"
PARTS = ("right_eye", "left_eye", "nose")
CORRESPONDENCE_IMAGES = 5
SUPERSAMPLE = 2  # draw at twice the size, then box-filter down: anti-aliased edges

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 205, 30),
}
STRIPE_ANGLES = {"hstripes": 0.0, "vstripes": 90.0, "dstripes": 45.0}  # degrees, image x towards y
TEXTURES = ("solid", "checker", "dots", *STRIPE_ANGLES)
SHAPES = ("disc", "square", "triangle", "cross", "star", "ring", "hexagon", "face")


@dataclass(frozen=True)
class DemoClass:
    """One demo class: what its object looks like. ``colour`` is a key of COLOURS or 'any'."""

    class_id: str  # synset-like id (source) or Caltech folder name (target)
    name: str  # human-readable
    shape: str
    texture: str = "solid"
    colour: str = "any"


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
# Drawing


@lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a side x side canvas."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    return x, y


def _random_hue_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour of random hue and brightness."""
    hue = rng.uniform(0, 6)
    ramp = np.clip(np.abs((hue - np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)  # HSV with S=V=1
    return (ramp * rng.uniform(0.45, 1.0) * 255).astype(np.float32)


def _object_colours(rng: np.random.Generator, cls: DemoClass) -> tuple[np.ndarray, np.ndarray]:
    """Main and second colour of the object; the class colour is jittered, 'any' is random, faces are skin."""
    if cls.shape == "face":
        main = np.clip(np.array([225, 175, 135], np.float32) * rng.uniform(0.6, 1.1) + rng.uniform(-20, 20, 3), 0, 255)
    elif cls.colour == "any":
        main = _random_hue_colour(rng)
    else:
        main = np.clip(np.array(COLOURS[cls.colour], np.float32) + rng.uniform(-20, 20, 3), 0, 255)
    # A second colour of clearly different brightness, so textures have visible edges.
    second = _random_hue_colour(rng)
    for _ in range(8):
        if abs(second.mean() - main.mean()) > 60:
            break
        second = _random_hue_colour(rng) if rng.random() < 0.5 else rng.choice([20.0, 235.0]) * np.ones(3, np.float32)
    return main, second


def _texture(
    rng: np.random.Generator, texture: str, side: int, box: tuple[int, int, int, int], main: np.ndarray, second: np.ndarray
) -> Image.Image:
    """The texture over ``box`` (x0, y0, x1, y1) of a side x side canvas.

    Its orientation is the class signal, jittered a little.
    """
    main, second = main.astype(np.uint8), second.astype(np.uint8)
    x0, y0, x1, y1 = box
    if texture == "solid":
        return Image.new("RGB", (x1 - x0, y1 - y0), tuple(int(v) for v in main))
    x, y = (g[y0:y1, x0:x1] for g in _grid(side))  # only the object's box: the costliest step of drawing
    period = side * rng.uniform(0.07, 0.11)
    phase = rng.uniform(0, period)
    if texture in STRIPE_ANGLES:
        a = math.radians(STRIPE_ANGLES[texture] + rng.uniform(-8, 8))
        # Distance along the stripes' normal: stripes at angle a run along direction (cos a, sin a).
        on = ((-x * math.sin(a) + y * math.cos(a) + phase) % period) < period / 2
    elif texture == "checker":
        a = math.radians(rng.uniform(-10, 10))
        u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
        on = (((u + phase) // (period / 1.2)) + ((v + phase) // (period / 1.2))) % 2 == 0
    elif texture == "dots":
        cell = period * 0.9
        du, dv = (x + phase) % cell - cell / 2, (y + phase) % cell - cell / 2
        on = du * du + dv * dv < (cell * 0.3) ** 2
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    return Image.fromarray(np.where(on[..., None], main, second))


def _background(rng: np.random.Generator, side: int, avoid: np.ndarray) -> Image.Image:
    """A desaturated two-colour gradient with low-frequency noise, kept away from the object's colour."""
    for _ in range(8):
        # Half grey: backgrounds are duller than the objects.
        c0, c1 = (0.5 * rng.uniform(0, 255, (2, 3)) + 0.5 * rng.uniform(60, 200, (2, 1))).astype(np.float32)
        if np.abs((c0 + c1) / 2 - avoid).sum() > 120:
            break
    # Drawn on a coarse 5x5 grid and upsampled: a linear gradient stays linear, the noise becomes blobs.
    g = np.linspace(-0.5, 0.5, 5, dtype=np.float32)
    a = rng.uniform(0, 2 * math.pi)
    t = np.clip(g[None, :] * math.cos(a) + g[:, None] * math.sin(a) + 0.5, 0, 1)
    coarse = c0 + t[..., None] * (c1 - c0) + rng.uniform(-1, 1, (5, 5, 3)) * rng.uniform(12, 40)
    return Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[list[tuple[float, float]]]:
    """Outline(s) of a shape of radius ``r`` centred at (cx, cy), rotated by ``angle`` radians.

    A ring is two outlines, outer then hole.
    """

    def ring_of(radii: list[float], start: float) -> list[tuple[float, float]]:
        turns = [start + angle + 2 * math.pi * k / len(radii) for k in range(len(radii))]
        return [(cx + rad * math.cos(t), cy + rad * math.sin(t)) for rad, t in zip(radii, turns)]

    if shape in ("disc", "face"):
        return [ring_of([r] * 64, 0)]
    if shape == "ring":
        return [ring_of([r] * 64, 0), ring_of([r * 0.55] * 64, 0)]
    if shape == "square":
        return [ring_of([r * 1.15] * 4, math.pi / 4)]
    if shape == "triangle":
        return [ring_of([r * 1.3] * 3, -math.pi / 2)]
    if shape == "hexagon":
        return [ring_of([r] * 6, 0)]
    if shape == "star":
        return [ring_of([r * 1.1, r * 0.45] * 5, -math.pi / 2)]
    if shape == "cross":
        w = r * 0.33
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        c, s = math.cos(angle), math.sin(angle)
        return [[(cx + px * c - py * s, cy + px * s + py * c) for px, py in pts]]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _bbox(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _draw_distractors(rng: np.random.Generator, draw: ImageDraw.ImageDraw, side: int, count: int) -> None:
    """Clutter that is not any class: thin lines, small outlines and small blobs of random colour."""
    for _ in range(count):
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        x0, y0 = rng.uniform(0, side, 2)
        if kind == 0:
            x1, y1 = x0 + rng.uniform(-0.4, 0.4) * side, y0 + rng.uniform(-0.4, 0.4) * side
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        else:
            rx, ry = rng.uniform(0.02, 0.08, 2) * side
            box = [x0 - rx, y0 - ry, x0 + rx, y0 + ry]
            if kind == 1:
                draw.ellipse(box, outline=colour, width=int(rng.integers(1, 3)))
            else:
                draw.ellipse(box, fill=colour)


def _draw_face(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float, skin: np.ndarray
) -> dict[str, tuple[float, float, float, float]]:
    """Eyes, nose and mouth on a face disc (already drawn); returns each part's box on the canvas."""
    c, s = math.cos(angle), math.sin(angle)

    def at(dx: float, dy: float) -> tuple[float, float]:  # face-frame offset (x right, y down) -> canvas
        return cx + (dx * c - dy * s) * r, cy + (dx * s + dy * c) * r

    def blob(dx: float, dy: float, rx: float, ry: float, fill: tuple[int, ...]) -> tuple[float, float, float, float]:
        pts = [at(dx + rx * math.cos(t), dy + ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
        draw.polygon(pts, fill=fill)
        return _bbox(pts)

    dark = tuple(int(v) for v in rng.uniform(0, 60, 3))
    eye_dx, eye_dy = rng.uniform(0.3, 0.42), rng.uniform(-0.38, -0.2)
    eye_rx, eye_ry = rng.uniform(0.11, 0.15), rng.uniform(0.08, 0.12)
    boxes = {
        # The face's own right eye is on the image's left for a frontal face.
        "right_eye": blob(-eye_dx + rng.uniform(-0.03, 0.03), eye_dy, eye_rx, eye_ry, dark),
        "left_eye": blob(eye_dx + rng.uniform(-0.03, 0.03), eye_dy, eye_rx, eye_ry, dark),
    }
    nose_y, nose = rng.uniform(0.0, 0.12), tuple(int(v) for v in skin * rng.uniform(0.3, 0.45))
    nose_pts = [at(0, nose_y - 0.17), at(-0.1, nose_y + 0.08), at(0.1, nose_y + 0.08)]
    draw.polygon(nose_pts, fill=nose)
    boxes["nose"] = _bbox(nose_pts)
    mouth_y, mouth_w = rng.uniform(0.38, 0.5), rng.uniform(0.25, 0.4)
    draw.line([at(-mouth_w, mouth_y), at(0, mouth_y + 0.1), at(mouth_w, mouth_y)], fill=dark, width=max(2, int(r * 0.08)))
    return boxes


@dataclass(frozen=True)
class Drawing:
    """One drawn image and, for faces, its part boxes (x0, y0, x1, y1) in pixels of the image."""

    image: Image.Image
    parts: dict[str, tuple[int, int, int, int]]  # empty unless a face
    object_box: tuple[int, int, int, int]  # the object's bounding box (Table 3's random masks go inside)


def draw_image(cls: DemoClass, size: int, rng: np.random.Generator) -> Drawing:
    """Draw one image of ``cls`` (size x size RGB) from the random stream ``rng``."""
    side = size * SUPERSAMPLE
    main, second = _object_colours(rng, cls)
    canvas = _background(rng, side, main)
    draw = ImageDraw.Draw(canvas)
    _draw_distractors(rng, draw, side, int(rng.integers(2, 6)))

    r = rng.uniform(0.2, 0.32) * side
    cx, cy = rng.uniform(0.35, 0.65, 2) * side
    # Small rotations only: a square turned 45 degrees would be a diamond, a face should stay frontal.
    angle = math.radians(rng.uniform(-12, 12) if cls.shape == "face" else rng.uniform(-20, 20))
    mask = Image.new("L", (side, side), 0)
    mask_draw = ImageDraw.Draw(mask)
    outlines = _polygon(cls.shape, cx, cy, r, angle)
    for k, outline in enumerate(outlines):
        mask_draw.polygon(outline, fill=255 if k == 0 else 0)
    bx0, by0, bx1, by1 = _bbox(outlines[0])
    box = max(0, math.floor(bx0)), max(0, math.floor(by0)), min(side, math.ceil(bx1) + 1), min(side, math.ceil(by1) + 1)
    canvas.paste(_texture(rng, cls.texture, side, box, main, second), box[:2], mask.crop(box))

    if cls.shape == "face":
        parts = _draw_face(rng, draw, cx, cy, r, angle, main)
    else:  # Some clutter in front (partial occlusion); faces stay unoccluded, their parts are Table 3's landmarks.
        parts = {}
        _draw_distractors(rng, draw, side, int(rng.integers(0, 2)))
    image = canvas.reduce(SUPERSAMPLE)
    noisy = np.asarray(image, np.float32) + rng.standard_normal((size, size, 3), np.float32) * rng.uniform(3, 9)
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))

    def to_pixels(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        # Outward rounding onto the stored image's pixel grid, clipped to the image.
        x0, y0, x1, y1 = (v / SUPERSAMPLE for v in box)
        return max(0, math.floor(x0)), max(0, math.floor(y0)), min(size, math.ceil(x1)), min(size, math.ceil(y1))

    return Drawing(image, {k: to_pixels(b) for k, b in parts.items()}, to_pixels(_bbox(outlines[0])))


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
        jobs += [_Job("train", c, i, str(train_dir / f"{cls.class_id}_{i + 1}.JPEG")) for i in range(config.train_per_class)]
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
        raise ValueError(f"make_demo: val_per_class must be at least {CORRESPONDENCE_IMAGES} (Table 3 uses 5 val faces)")
    paths = demo_paths(root)
    if paths.root.exists() and not paths.root.is_dir():
        raise NotADirectoryError(f"demo root {paths.root} is a file; expected a folder (or no path) for the demo dataset")
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
