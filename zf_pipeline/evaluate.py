"""Top-1 / top-5 error with the center crop or the paper's 10 crops, train error, and model ensembles.

Section 3.1: test images are the 256x256 center region minus the per-pixel mean, cut into 10 sub-crops
of 224x224 (4 corners + center, each with its horizontal flip); the softmax probabilities of the crops
are averaged. Table 2's ensembles average the probabilities of several networks the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext

import torch
from torch import nn


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows have their label among the ``k`` highest scores, for each k (k capped at the class count)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in ks}


def topk_errors(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k error rates in % (``{'top1_err': ..., 'top5_err': ...}``) of scores (logits or probabilities)."""
    n = len(labels)
    return {f"top{k}_err": 100.0 * (1 - c / n) for k, c in topk_correct(scores, labels, ks).items()}


def crop_offsets(size: int, crop: int, mode: str) -> list[tuple[int, int]]:
    """(top, left) of the test crops: 'center' gives one, 'ten' the 4 corners + center (flips added later)."""
    c = (size - crop) // 2
    if mode == "center":
        return [(c, c)]
    if mode == "ten":
        e = size - crop
        return [(0, 0), (0, e), (e, 0), (e, e), (c, c)]
    raise ValueError(f"crop mode must be 'center' or 'ten', not {mode!r}")


def eval_crops(
    images: torch.Tensor, mean: torch.Tensor, crop: int, mode: str, scale: float = 1.0
) -> list[torch.Tensor]:
    """The mean-subtracted test crops of a uint8 N x 3 x S x S batch: 1 (center) or 10 (with flips)."""
    x = (images.float() - mean) * scale
    out = []
    for top, left in crop_offsets(x.shape[-1], crop, mode):
        view = x[:, :, top : top + crop, left : left + crop]
        out.append(view)
        if mode == "ten":
            out.append(view.flip(-1))
    return out


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    mean: torch.Tensor,
    crop: int,
    mode: str = "ten",
    scale: float = 1.0,
    amp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities averaged over the test crops, and the labels, for every image of ``batches``."""
    model.eval()
    probs, labels = [], []
    for images, y in batches:
        ctx = torch.autocast(images.device.type, torch.bfloat16) if amp else nullcontext()
        with ctx:
            p = sum(model(x).float().softmax(1) for x in eval_crops(images, mean, crop, mode, scale))
        probs.append(p / (10 if mode == "ten" else 1))
        labels.append(y)
    return torch.cat(probs), torch.cat(labels)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    mean: torch.Tensor,
    crop: int,
    mode: str = "ten",
    scale: float = 1.0,
    amp: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 error (%) of one network with center or 10-crop testing, plus the image count ``n``."""
    probs, labels = predict(model, batches, mean, crop, mode, scale, amp)
    return {**topk_errors(probs, labels), "n": len(labels)}


def evaluate_ensemble(
    models: Sequence[nn.Module],
    batches_fn: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    mean: torch.Tensor,
    crop: int,
    mode: str = "ten",
    scale: float = 1.0,
    amp: bool = False,
) -> dict[str, float]:
    """Table 2's "N convnets": the networks' (crop-averaged) probabilities averaged, then top-1 / top-5 error.

    ``batches_fn()`` returns a fresh pass over the same images in the same order for each network.
    """
    total, labels = None, None
    for model in models:
        probs, y = predict(model, batches_fn(), mean, crop, mode, scale, amp)
        if labels is not None and not torch.equal(labels, y):
            raise ValueError("ensemble members saw the images in different orders; batches_fn must be deterministic")
        total, labels = (probs if total is None else total + probs), y
    return {**topk_errors(total / len(models), labels), "n": len(labels), "models": len(models)}
