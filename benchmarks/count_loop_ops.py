"""Eager torch ops a batch on the extraction loop's thread, besides the forward pass (CPU, tiny net).

Each such op is, on a GPU, a kernel launch and a GIL hand-off on the thread that bounds the pass
(docs/results/extraction.md); the count needs no GPU, so a change can be weighed here first.

    python benchmarks/count_loop_ops.py [--batches 40] [--batch 16]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from zf_pipeline import features
from zf_pipeline.models.zfnet import CONV_LAYERS, build, kaiming_init, variant


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched on this thread while active (the copier and writer threads are not seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    model = build(variant("krizhevsky", width=0.0625, input_size=64), seed=0)
    kaiming_init(model)
    model.eval()
    images = torch.randn(args.batch, 3, 64, 64)
    batches = (
        (images, torch.zeros(args.batch, dtype=torch.long), [f"img{i * args.batch + j:08d}" for j in range(args.batch)])
        for i in range(args.batches)
    )
    with tempfile.TemporaryDirectory() as tmp:
        with OpCounter() as passing:
            features.extract(model, batches, Path(tmp) / "x", split="s", activation_layers=CONV_LAYERS, layers=())
    with OpCounter() as forward, torch.inference_mode():  # the forward alone, once, as extract runs it
        model.forward_layers(images, list(CONV_LAYERS))
    per_batch = collections.Counter({op: n / args.batches - forward.ops.get(op, 0) for op, n in passing.ops.items()})
    print(f"eager ops a batch besides the forward: {sum(per_batch.values()):.0f}")
    print(", ".join(f"{op} {n:.1f}" for op, n in per_batch.most_common(12)))


if __name__ == "__main__":
    main()
