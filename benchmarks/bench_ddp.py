"""Training img/s under torchrun: DDP over the GPUs of one host, each rank on its own shards.

    torchrun --nproc-per-node 1 benchmarks/bench_ddp.py --shards DIR --mean FILE    # the 1-GPU baseline
    torchrun --nproc-per-node 2 benchmarks/bench_ddp.py --shards DIR --mean FILE    # 2 GPUs, same per-rank batch

The step is zf_pipeline.train's: the decoded uint8 cache of the rank's shards on its GPU, the compiled
crop/flip/mean gather, the compiled DDP network (bf16, channels_last, fused SGD). Rank 0 prints the
summed img/s over all ranks.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist
from torch import nn

from zf_pipeline.data.loader import crop_draws, crop_flip, endless, load_mean, make_source, open_split
from zf_pipeline.distributed import dist_env
from zf_pipeline.models import build, variant
from zf_pipeline.models.zfnet import kaiming_init
from zf_pipeline.train import make_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--mean", required=True)
    p.add_argument("--arch", default="ours")
    p.add_argument("--batch", type=int, default=128, help="per rank")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=30)
    args = p.parse_args()
    rank, world, local = dist_env()
    dev = torch.device(f"cuda:{local}")
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl")
    torch.backends.cudnn.benchmark = True
    split = open_split(args.shards)
    net = build(variant(args.arch, num_classes=len(split.classes)), seed=0)
    kaiming_init(net)
    net = net.to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4, fused=True)
    model = torch.compile(nn.parallel.DistributedDataParallel(net, device_ids=[local]))
    step = make_step(model, opt, amp=True)
    augment = torch.compile(crop_flip, dynamic=False)
    mean = load_mean(args.mean, split.size).to(dev)
    src = make_source(split, args.batch, shuffle=True, mode="cache", rank=rank, world_size=world, device=dev)
    gen = torch.Generator().manual_seed(rank)
    batches = endless(src)

    def one() -> None:
        images, labels = next(batches)
        step(augment(images, mean, crop_draws(len(images), split.size, 224, gen, dev), 224), labels)

    for _ in range(args.warmup):
        one()
    torch.cuda.synchronize()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(args.steps):
        one()
    torch.cuda.synchronize()
    seconds = torch.tensor([time.perf_counter() - t], device=dev)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    if rank == 0:
        rate = world * args.batch * args.steps / seconds.item()
        print("ddp", json.dumps({"arch": args.arch, "gpus": world, "batch_per_rank": args.batch,
                                 "global_batch": world * args.batch, "img_per_s": rate,
                                 "device": torch.cuda.get_device_name(dev)}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
