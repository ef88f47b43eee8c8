"""Section 4's analyses of a trained convnet: occlusion (Fig. 5), invariance (Fig. 4),
part correspondence (Table 3) and feature evolution over training (Fig. 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (dropout off) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module):
    """The device and dtype of the model's parameters (inputs are moved there)."""
    p = next(model.parameters())
    return p.device, p.dtype


__all__ = ["evaluating", "model_device"]
