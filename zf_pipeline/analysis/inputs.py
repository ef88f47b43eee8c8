"""The validation images as the trained network sees them, for the figures of section 4: the center crop
of each shard image minus the per-pixel mean, at the training run's input scale (section 3.1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zf_pipeline.analysis.correspondence import PartsConfig
from zf_pipeline.data import loader, preprocess, shard_format
from zf_pipeline.evaluate import eval_crops
from zf_pipeline.models import checkpoint
from zf_pipeline.render import image_to_rgb


class ValImages:
    """A trained network and its validation split: inputs in order, by id, and back to displayable RGB."""

    def __init__(self, checkpoint_file: str | Path, crop: int, scale: float, val_dir: str | Path, mean_file: str | Path,
                 device: str):
        self.device = device
        self.net = checkpoint.load_model(checkpoint_file, device).eval()
        self.crop, self.scale = crop, scale
        self.split = loader.open_split(val_dir)
        self.classes = shard_format.load_classes(val_dir)[1]
        full = loader.load_mean(mean_file, self.split.size)
        self.mean_full = full.to(device)
        offset = (self.split.size - crop) // 2
        # Added back (at the input's scale) to show images in their colours.
        self.display_mean = full[:, offset : offset + crop, offset : offset + crop] * scale

    def batches(
        self, batch_size: int = 128, limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """(inputs on the device, labels, image_ids), in the split's order, at most ``limit`` images."""
        seen = 0
        for x, y, ids in loader.network_inputs(
            self.split, self.mean_full, self.crop, batch_size, self.device, self.scale
        ):
            if limit is not None and seen >= limit:
                return
            keep = len(ids) if limit is None else min(len(ids), limit - seen)
            seen += keep
            yield x[:keep], y[:keep], ids[:keep]

    def lookup(self, image_ids: set[str]) -> dict[str, torch.Tensor]:
        """image_id -> input tensor (CPU), for ``image_ids``; reads the split until all are found."""
        images = {}
        for x, _, ids in self.batches():
            images.update((i, x[k].cpu()) for k, i in enumerate(ids) if i in image_ids)
            if len(images) == len(image_ids):
                break
        return images

    def from_file(self, path: str | Path) -> torch.Tensor:
        """An image file as the network sees a shard image: resized and center-cropped to the shard size as
        the shards were, then the test crop minus the mean (CPU)."""
        with Image.open(path) as im:
            resized = preprocess.resize_center_crop(im, self.split.size)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy())
        return eval_crops(pixels[None], self.mean_full.cpu(), self.crop, "center", self.scale)[0][0]

    def rgb(self, x: torch.Tensor) -> torch.Tensor:
        return image_to_rgb(x.cpu().float(), self.display_mean)


def one_per_class(vis: ValImages, count: int) -> dict[str, tuple[torch.Tensor, int]]:
    """The first validation image of each class, until ``count`` images: image_id -> (input, label)."""
    picked: dict[str, tuple[torch.Tensor, int]] = {}
    classes: set[int] = set()
    for x, y, ids in vis.batches():
        for xi, yi, i in zip(x.cpu(), y.tolist(), ids):
            if yi not in classes:
                classes.add(yi)
                picked[i] = (xi, yi)
                if len(picked) == count:
                    return picked
    return picked


def part_images(vis: ValImages, parts: PartsConfig) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The parts config's images (files, or image_ids of the validation shards) as network inputs, and each
    original file's (width, height)."""
    by_id = {img.key for img in parts.images if not img.is_path}
    found = vis.lookup(by_id) if by_id else {}
    manifest = shard_format.load_manifest(vis.split.root).select(["image_id", "source"]).to_pydict()
    sources = dict(zip(manifest["image_id"], manifest["source"]))
    inputs, sizes = [], []
    for img in parts.images:
        source = img.key if img.is_path else sources.get(img.key)
        if source is None or (not img.is_path and img.key not in found):
            raise ValueError(f"parts config image {img.key!r} is not in the validation shards {vis.split.root}")
        with Image.open(source) as im:
            sizes.append(im.size)
        inputs.append(vis.from_file(source) if img.is_path else found[img.key])
    return torch.stack(inputs), sizes
