"""Inputs for the atlas tests: a tiny random-init ZFNet, images, and a brute-force top-9 table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zf_pipeline.data.demo import make_demo
from zf_pipeline.models.zfnet import CONV_LAYERS, ZFNet, build, variant

INPUT_SIZE = 112


def tiny_model(width: float = 0.05) -> ZFNet:
    """Krizhevsky's net at ``width`` of its maps, 112 px input, 5 classes; deterministic random init."""
    return build(variant("krizhevsky", width=width, input_size=INPUT_SIZE, num_classes=5), seed=0).eval()


def brute_force_top9(model: ZFNet, images: dict[str, torch.Tensor]) -> list[dict]:
    """The top-9 table (layer, channel, rank, image_id, value, y, x) of every conv map: each image's strongest unit."""
    ids = list(images)
    with torch.no_grad():
        acts = model.forward_layers(torch.stack([images[i] for i in ids]), list(CONV_LAYERS))
    rows = []
    for layer, act in acts.items():
        value, flat = act.flatten(2).max(2)  # [N, C]
        for c in range(act.shape[1]):
            for rank, n in enumerate(value[:, c].argsort(descending=True)[:9].tolist(), 1):
                y, x = divmod(int(flat[n, c]), act.shape[-1])
                rows.append({"layer": layer, "channel": c, "rank": rank, "image_id": ids[n],
                             "value": float(value[n, c]), "y": y, "x": x})
    return rows


def demo_images(root: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The generated demo's validation images as network inputs (center 112 px crop, mean subtracted),
    by image id, and their mean image."""
    paths = make_demo(root, train_per_class=2, val_per_class=5, target_per_class=1, workers=1)
    files = sorted((paths.source / "val").rglob("*.JPEG"))
    arrays = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            left, top = (im.width - INPUT_SIZE) // 2, (im.height - INPUT_SIZE) // 2
            arrays.append(np.asarray(im.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)), dtype=np.float32) / 255)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = x.mean(0)
    return {f.stem: img - mean for f, img in zip(files, x, strict=True)}, mean
