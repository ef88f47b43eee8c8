"""Top-1 / top-5 error with the center crop or the paper's 10 crops, train error, and model ensembles.

Section 3.1: test images are the 256x256 center region minus the per-pixel mean, cut into 10 sub-crops
of 224x224 (4 corners + center, each with its horizontal flip); the softmax probabilities of the crops
are averaged. Table 2's ensembles average the probabilities of several networks the same way, from the
probabilities each run saved (:func:`save_predictions`), so an ensemble needs neither the networks nor the images.
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zf_pipeline.io import atomic_path


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


def save_predictions(path: str | os.PathLike, probs: torch.Tensor, labels: torch.Tensor, ranks: int = 1) -> Path:
    """A run's crop-averaged validation probabilities (float16) and labels, as an ``.npz`` that Table 2's
    ensembles average without the networks or the images; ``ranks``: the DDP ranks whose shards, in rank
    order, gave the image order."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # np.savez would append ".npz" to the temporary name
            np.savez(f, probs=probs.cpu().to(torch.float16).numpy(), labels=labels.cpu().numpy(),
                     ranks=np.int64(ranks))
    return Path(path)


def load_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """What :func:`save_predictions` wrote (no pickles); a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions file there (a run writes it with its final 10-crop test)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in ("probs", "labels", "ranks")}
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a predictions file (expected probs, labels and ranks arrays): {e}") from e


def _members(paths: Sequence[str | os.PathLike]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's probabilities (float32) and the labels they share; members tested on other images refused."""
    if not paths:
        raise ValueError("an ensemble needs at least one member's predictions")
    first = load_predictions(paths[0])
    probs = [first["probs"].astype(np.float32)]
    for path in paths[1:]:
        member = load_predictions(path)
        if member["probs"].shape != probs[0].shape or not np.array_equal(member["labels"], first["labels"]) \
                or member["ranks"] != first["ranks"]:
            raise ValueError(f"{path}: its images differ from {paths[0]}'s (count, labels or order); an ensemble's "
                             f"members must be tested on one validation split by one number of ranks")
        probs.append(member["probs"].astype(np.float32))
    return probs, first["labels"]


def _averaged_errors(probs: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    scores = torch.from_numpy(sum(probs[1:], probs[0].copy()) / len(probs))
    return {**topk_errors(scores, torch.from_numpy(labels)), "n": len(labels), "models": len(probs)}


def ensemble_errors(paths: Sequence[str | os.PathLike]) -> dict[str, float]:
    """Table 2's "N convnets": the networks' saved (crop-averaged) probabilities averaged, then top-1 / top-5
    error. Every member must have seen the same images in the same order."""
    return _averaged_errors(*_members(paths))


def ensemble_sizes(paths: Sequence[str | os.PathLike], max_subsets: int = 20) -> list[dict[str, float]]:
    """What each added network buys: for k = 1..N members, the errors of k-network ensembles averaged over
    the k-subsets of ``paths`` (at most ``max_subsets`` of them, drawn with a fixed seed), with their spread."""
    probs, labels = _members(paths)
    sizes = []
    for k in range(1, len(probs) + 1):
        subsets = list(itertools.combinations(range(len(probs)), k))
        if len(subsets) > max_subsets:
            subsets = random.Random(k).sample(subsets, max_subsets)
        errs = [_averaged_errors([probs[i] for i in subset], labels) for subset in subsets]
        top1 = [e["top1_err"] for e in errs]
        sizes.append({"models": k, "subsets": len(subsets), "top1_err": statistics.mean(top1),
                      "top1_err_min": min(top1), "top1_err_max": max(top1),
                      "top5_err": statistics.mean(e["top5_err"] for e in errs)})
    return sizes
