"""Checkpoint I/O: one file per epoch, written atomically, readable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes):
``model`` (state_dict), ``arch`` (``ZFNetConfig.to_dict()``), ``train_config`` (plain dict),
``optimizer``, ``scheduler``, ``epoch`` (epochs completed), ``rng`` (torch CPU / CUDA states),
``metrics`` (the list of per-epoch metric dicts so far).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zf_pipeline.io import atomic_path
from zf_pipeline.models.zfnet import ZFNet, ZFNetConfig


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # torch.compile and DDP wrap the network; store the bare module's names (conv1.weight, ...).
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """The torch RNG states a resumed run needs to continue identically (dropout draws)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    arch: ZFNetConfig,
    *,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    train_config: dict | None = None,
    metrics: list[dict] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp name, then rename) and return its path."""
    state = {
        "model": _plain_state(model),
        "arch": arch.to_dict(),
        "train_config": dict(train_config or {}),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "rng": rng_state(),
        "metrics": list(metrics or []),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict (tensors on ``map_location``); clear error if the file is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint file there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable checkpoint (expected a torch.save'd dict): {e}") from e
    if not isinstance(state, dict) or "model" not in state or "arch" not in state:
        raise ValueError(f"{path}: checkpoint lacks 'model'/'arch'; expected a file written by save_checkpoint")
    return state


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ZFNet:
    """The trained network of a checkpoint, in eval mode."""
    state = load_checkpoint(path, map_location)
    model = ZFNet(ZFNetConfig.from_dict(state["arch"]))
    model.load_state_dict(state["model"])
    return model.to(map_location).eval()
