"""Where this process sits in a torchrun launch (torchrun sets RANK, WORLD_SIZE and LOCAL_RANK)."""

from __future__ import annotations

import os
from typing import NamedTuple


class DistEnv(NamedTuple):
    rank: int
    world_size: int
    local_rank: int  # the GPU index of this process on its host


def dist_env() -> DistEnv:
    """This process's rank, the world size and its local rank; (0, 1, 0) when not launched by torchrun."""
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(name) or str(default)
        if not text.isdigit():
            raise ValueError(f"environment variable {name}={text!r}: expected a non-negative integer "
                             "(torchrun sets it)")
        values.append(int(text))
    return DistEnv(*values)
