"""Checkpoint I/O: one file per epoch, written atomically, readable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes):
``model`` (state_dict), ``arch`` (``ZFNetConfig.to_dict()``), ``train_config`` (plain dict),
``optimizer``, ``scheduler``, ``epoch`` (epochs completed), ``rng`` (torch CPU / CUDA states),
``metrics`` (the list of per-epoch metric dicts so far).
"""

from __future__ import annotations

import errno
import os
import shutil
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
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as e:
        # torch.save reports a short write (a full disk or quota) as "unexpected pos", without its errno
        if getattr(e, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and "unexpected pos" not in str(e):
            raise
        free = shutil.disk_usage(Path(path).parent).free
        raise OSError(errno.ENOSPC, f"{path}: the checkpoint could not be written, the disk (or its quota) is full: "
                                    f"{free / 1e9:.1f} GB free there; {e}") from e
    return Path(path)


def checkpoint_bytes(model: nn.Module) -> int:
    """About the size of one of ``model``'s checkpoints: its fp32 weights and SGD's momentum buffers."""
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters())


def check_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """Fail at once, naming ``folder``, when its disk has less than ``need`` bytes free for ``what``, instead of
    failing when a write comes up short."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(errno.ENOSPC, f"{folder}: {free / 1e9:.1f} GB free, but {what} need about {need / 1e9:.1f} GB "
                                    f"(last.pt, its temporary copy and the Fig. 3 snapshots still to come)")


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
