"""CLI: ``extract`` one rank's share of a sharded pass, or ``merge`` the ranks' parts.

    torchrun --nproc-per-node 2 -m zf_pipeline.features extract --checkpoint last.pt --shards DIR \\
        --mean pixel_mean.npy --split val --out features/val --crop 224 --bf16 --compile
    python -m zf_pipeline.features merge --out features/val
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch

from zf_pipeline.data.loader import load_mean, open_split
from zf_pipeline.distributed import dist_env
from zf_pipeline.features.sharded import extract_part, merge_parts
from zf_pipeline.models.checkpoint import load_model
from zf_pipeline.models.zfnet import FEATURE_LAYERS


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv``; extract runs as rank RANK of WORLD_SIZE on GPU LOCAL_RANK (torchrun's variables)."""
    p = argparse.ArgumentParser(prog="python -m zf_pipeline.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="this rank's share of a sharded pass")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--shards", required=True, help="a shard folder (summary.json, manifest.parquet, tars)")
    ex.add_argument("--mean", required=True, help="the per-pixel mean image (.npy, S x S x 3)")
    ex.add_argument("--split", required=True, help="the split name written into the features rows")
    ex.add_argument("--out", required=True)
    ex.add_argument("--crop", type=int, default=224)
    ex.add_argument("--input-scale", type=float, default=1.0)
    ex.add_argument("--batch-size", type=int, default=256)
    ex.add_argument("--layers", nargs="+", help="feature layers (default: every one the net has)")
    ex.add_argument("--bf16", action="store_true")
    ex.add_argument("--compile", action="store_true")
    mg = sub.add_parser("merge", help="join the ranks' parts into --out")
    mg.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "merge":
        merge_parts(args.out)
        return
    env = dist_env()
    device = torch.device(f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, device)
    layers = args.layers or [name for name in FEATURE_LAYERS if name in model.layers]
    split = open_split(args.shards)
    mean = load_mean(args.mean, split.size).to(device)
    extract_part(model, split, mean, args.out, rank=env.rank, world_size=env.world_size, crop=args.crop,
                 input_scale=args.input_scale, batch_size=args.batch_size, device=device, split=args.split,
                 layers=layers, autocast=torch.bfloat16 if args.bf16 and device.type == "cuda" else None,
                 compile=args.compile)


if __name__ == "__main__":
    main()
