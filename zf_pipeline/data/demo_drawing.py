"""Drawing one demo image: an object of a shape, texture and colour over jittered clutter (numpy and PIL).

What a class looks like (:class:`DemoClass`) and :func:`draw_image`, which draws it from one random stream;
:mod:`zf_pipeline.data.demo` lays the drawings out as the ImageNet and Caltech-101 folders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

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
    rng: np.random.Generator,
    texture: str,
    side: int,
    box: tuple[int, int, int, int],
    main: np.ndarray,
    second: np.ndarray,
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
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r),
               (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
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
        pts = [at(dx + rx * math.cos(t), dy + ry * math.sin(t))
               for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
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
    draw.line([at(-mouth_w, mouth_y), at(0, mouth_y + 0.1), at(mouth_w, mouth_y)], fill=dark,
              width=max(2, int(r * 0.08)))
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
