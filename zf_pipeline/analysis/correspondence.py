"""Part correspondence (section 4.4, Table 3).

For each part (e.g. the right eye) the same part is masked grey in every image. For image i
and layer l, eps_i = x_i - x~_i is the change of the feature vector that masking causes. If
the net puts parts of different images in correspondence, masking the same part changes the
features the same way: the Hamming distance between sign(eps_i) and sign(eps_j) is small.

The paper sums H over the ordered pairs i != j of its 5 images. We report the mean over
unordered pairs (each counted once; the ordered sum counts each twice) of the NORMALIZED
Hamming distance, H divided by the length of the feature vector, i.e. the fraction of features
whose change differs in sign; the spread is the standard deviation over the pairs. These match
the magnitudes of Table 3 (0.07 .. 0.11). The baseline masks boxes of the same sizes at random
positions (inside the image's ``object`` box when the config gives one), over several seeded
draws, pooling all pairs of all draws.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zf_pipeline.analysis import evaluating, model_device
from zf_pipeline.analysis.occlusion import occlude

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), half-open, in pixels
RANDOM = "random"


@dataclass(frozen=True)
class PartImage:
    """One image of the correspondence set and its part boxes."""

    key: str  # a file path (resolved against the config's folder) or an image_id
    parts: dict[str, Box]
    object: Box | None = None  # where random masks may go; None = the whole image
    is_path: bool = True


@dataclass(frozen=True)
class PartsConfig:
    """The images, their parts, and how the random baseline is drawn."""

    images: list[PartImage]
    random_draws: int = 10
    seed: int = 0
    parts: tuple[str, ...] = field(default=())  # part names, in config order


def _box(value: object, where: str) -> Box:
    if not (isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, int) for v in value)):
        raise ValueError(f"{where}: expected a box [x0, y0, x1, y1] of 4 integers, got {value!r}")
    x0, y0, x1, y1 = value
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise ValueError(f"{where}: box {list(value)} is empty or negative; expected 0 <= x0 < x1 and 0 <= y0 < y1")
    return (x0, y0, x1, y1)


def load_parts_config(path: str | Path) -> PartsConfig:
    """Read ``{"images": [{"path" | "image_id": ..., "parts": {name: [x0, y0, x1, y1]}, "object": [...]?}],
    "random_draws": 10?, "seed": 0?}``. Every image must name the same parts. Boxes are in pixels of
    the image that :func:`correspondence` receives; :func:`in_input_pixels` maps boxes drawn on the
    original files through the paper's resize and crops."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the parts config as JSON ({e})") from e
    entries = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or len(entries) < 2:
        raise ValueError(f"{path}: expected an object with 'images': a list of at least 2 images")
    images, names = [], None
    for i, entry in enumerate(entries):
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict) or ("path" in entry) == ("image_id" in entry):
            raise ValueError(f"{where}: expected an object with exactly one of 'path' or 'image_id'")
        parts = entry.get("parts")
        if not isinstance(parts, dict) or not parts:
            raise ValueError(f"{where}: expected 'parts': an object of part name -> [x0, y0, x1, y1]")
        if names is None:
            names = tuple(parts)
        elif set(parts) != set(names):
            raise ValueError(f"{where}: parts {sorted(parts)} differ from the first image's {sorted(names)}")
        is_path = "path" in entry
        key = str((path.parent / entry["path"]).resolve()) if is_path else str(entry["image_id"])
        obj = _box(entry["object"], f"{where}.object") if "object" in entry else None
        boxes = {name: _box(parts[name], f"{where}.parts.{name}") for name in names}
        images.append(PartImage(key, boxes, obj, is_path))
    draws, seed = doc.get("random_draws", 10), doc.get("seed", 0)
    if not isinstance(draws, int) or draws < 1 or not isinstance(seed, int):
        raise ValueError(f"{path}: 'random_draws' must be a positive integer and 'seed' an integer")
    return PartsConfig(images, draws, seed, names)


def in_input_pixels(
    config: PartsConfig, sizes: Sequence[tuple[int, int]], resize: int = 256, crop: int = 224
) -> PartsConfig:
    """``config`` with every box mapped from its original image (``sizes[i]`` = (width, height)) to the
    network input: smaller side resized to ``resize``, the centre ``resize`` square, its centre ``crop`` square.
    Boxes grow to whole pixels and are clipped to the crop."""
    if len(sizes) != len(config.images):
        raise ValueError(f"{len(sizes)} image sizes for a parts config of {len(config.images)} images")

    def mapped(box: Box, width: int, height: int, where: str) -> Box:
        scale = resize / min(width, height)
        left = (width * scale - crop) / 2
        top = (height * scale - crop) / 2
        # The tolerance keeps float noise (100 * 1.12 = 111.99..) from growing a box by a pixel.
        x0, y0 = (max(0, math.floor(v + 1e-6)) for v in (box[0] * scale - left, box[1] * scale - top))
        x1, y1 = (min(crop, math.ceil(v - 1e-6)) for v in (box[2] * scale - left, box[3] * scale - top))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{where}: box {list(box)} falls outside the {crop}x{crop} centre crop")
        return (x0, y0, x1, y1)

    images = []
    for img, (width, height) in zip(config.images, sizes):
        parts = {name: mapped(box, width, height, f"image {img.key} part {name}") for name, box in img.parts.items()}
        obj = mapped(img.object, width, height, f"image {img.key} object") if img.object else None
        images.append(replace(img, parts=parts, object=obj))
    return replace(config, images=images)


def sign_change(
    model: nn.Module,
    images: torch.Tensor,
    boxes: torch.Tensor,
    layers: Sequence[str],
    fill: float = 0.0,
    original: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """sign(x_i - x~_i) per layer, ``[N, D]`` int8: image i with ``boxes[i]`` masked to ``fill``.

    ``original``: the unmasked images' features, when already computed (``forward_layers`` output).
    """
    with evaluating(model), torch.no_grad():
        if original is None:
            original = model.forward_layers(images, list(layers))
        masked = model.forward_layers(occlude(images, boxes, fill), list(layers))
    return {
        layer: torch.sign(original[layer].float() - masked[layer].float()).flatten(1).to(torch.int8) for layer in layers
    }


def pair_distances(signs: torch.Tensor) -> np.ndarray:
    """Normalized Hamming distance H(s_i, s_j) / D for every unordered pair i < j of the rows of ``signs``."""
    return torch.cat([(signs[i] != signs[i + 1 :]).float().mean(1) for i in range(len(signs) - 1)]).cpu().numpy()


def random_boxes(config: PartsConfig, part: str, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """For each image, a box of ``part``'s size at a uniformly random position inside its object box."""
    out = []
    for img in config.images:
        x0, y0, x1, y1 = img.parts[part]
        ox0, oy0, ox1, oy1 = img.object or (0, 0, width, height)
        h, w = min(y1 - y0, oy1 - oy0), min(x1 - x0, ox1 - ox0)
        top, left = rng.integers(oy0, oy1 - h + 1), rng.integers(ox0, ox1 - w + 1)
        out.append((left, top, left + w, top + h))
    return torch.tensor(out)


def correspondence(
    model: nn.Module,
    images: torch.Tensor,
    config: PartsConfig,
    layers: Sequence[str] = ("conv5", "fc7"),
    fill: float = 0.0,
) -> list[dict]:
    """Table 3: rows ``{part, layer, mean, std, pairs}`` for each part and for ``random``.

    ``images`` ([N, 3, H, W], mean-subtracted) are the config's images in config order.
    """
    if images.shape[0] != len(config.images):
        raise ValueError(f"{images.shape[0]} images for a parts config of {len(config.images)}")
    height, width = images.shape[-2:]
    for img in config.images:
        boxes = {**img.parts, **({"object": img.object} if img.object else {})}
        for name, (x0, y0, x1, y1) in boxes.items():
            if x1 > width or y1 > height:
                raise ValueError(f"image {img.key}: box {name} {[x0, y0, x1, y1]} exceeds the {height}x{width} input")
    device, dtype = model_device(model)
    images = images.to(device=device, dtype=dtype)
    pairs: dict[str, dict[str, list[np.ndarray]]] = {}
    rng = np.random.default_rng(config.seed)
    trials = [(name, torch.tensor([img.parts[name] for img in config.images])) for name in config.parts]
    for _ in range(config.random_draws):
        trials += [(RANDOM, random_boxes(config, name, height, width, rng)) for name in config.parts]
    with evaluating(model), torch.no_grad():
        original = model.forward_layers(images, list(layers))
    for name, boxes in trials:
        for layer, signs in sign_change(model, images, boxes.to(device), layers, fill, original).items():
            pairs.setdefault(name, {}).setdefault(layer, []).append(pair_distances(signs))
    logger.info("correspondence: %d masking trials over %d images", len(trials), len(config.images))
    rows = []
    for name, by_layer in pairs.items():
        for layer, parts in by_layer.items():
            d = np.concatenate(parts)
            rows.append(
                {"part": name, "layer": layer, "mean": float(d.mean()), "std": float(d.std()), "pairs": int(d.size)}
            )
    return rows


__all__ = [
    "PartImage",
    "PartsConfig",
    "correspondence",
    "in_input_pixels",
    "load_parts_config",
    "pair_distances",
    "random_boxes",
    "sign_change",
]
