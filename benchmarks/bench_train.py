"""Training speed of ZFNet: the synthetic ceiling against end-to-end from shards, in one process.

    python benchmarks/bench_train.py --shards DIR --mean FILE [--archs ours krizhevsky] [--modes cache+aug stream+aug]

For each architecture: the compiled bf16 channels_last network trained on random tensors already on the
GPU (the ceiling: nothing but the model), then the same step fed from the shard folder by each loader
mode (read + decode + random crop + flip + mean subtraction included): ``cache`` holds the decoded split on
the GPU, ``stream`` decodes it again every epoch in ``--workers`` processes (the path for ImageNet-size
splits); ``stream`` also gets a row for the loader alone, with no training step. Prints a table; ``--json``
writes the numbers. A ``+aug`` suffix (``cache+aug``) compiles the crop/flip/mean gather on its own, as
``zf_pipeline.train`` does; ``+fused`` compiles it into the network's forward (one graph from uint8 to
loss); ``+graph`` does that under CUDA graphs (torch.compile mode="reduce-overhead"). Without a suffix
the augmentation runs eagerly. DESIGN.md's ceilings on one H100: 25,800 (krizhevsky), 19,500 (ours) img/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch
import torch.nn.functional as F

from zf_pipeline.data.loader import crop_draws, crop_flip, endless, load_mean, make_source, open_split
from zf_pipeline.data.stream import measure
from zf_pipeline.models import build, variant
from zf_pipeline.models.zfnet import filter_renormalizer, kaiming_init
from zf_pipeline.train import make_step

DESIGN_CEILING = {"krizhevsky": 25_800, "ours": 19_500, "zf_published": 16_600}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rate(step_fn, steps: int, warmup: int, batch: int) -> float:
    """Images per second of ``step_fn()`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step_fn()
    _sync()
    t = time.perf_counter()
    for _ in range(steps):
        step_fn()
    _sync()
    return steps * batch / (time.perf_counter() - t)


def fused_step(net: torch.nn.Module, opt: torch.optim.Optimizer, mean: torch.Tensor, crop: int, mode: str | None,
               after_update=None):
    """``step(uint8 images, labels, draws)`` with crop/flip/mean inside one compiled forward.

    ``mode`` goes to torch.compile."""

    def forward_loss(images, labels, draws):
        x = crop_flip(images, mean, draws, crop)
        with torch.autocast("cuda", torch.bfloat16):
            logits = net(x)
        return F.cross_entropy(logits.float(), labels)

    forward = torch.compile(forward_loss, mode=mode, dynamic=False)

    def step(images, labels, draws):
        loss = forward(images, labels, draws)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_update is not None:
            after_update()

    return step


def bench(arch: str, args) -> list[dict]:
    dev = torch.device(args.device)
    net = build(variant(arch, num_classes=1000, width=args.width), seed=0)
    kaiming_init(net)  # a trainable start keeps the loss finite through the timed steps
    net = net.to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4, fused=dev.type == "cuda" or None)
    # --filter-radius: section 3.1's renormalization after every update, compiled like the network
    renorm = filter_renormalizer(net, args.filter_radius, args.compile) if args.filter_radius else None
    step = make_step(torch.compile(net) if args.compile else net, opt, amp=dev.type == "cuda", after_update=renorm)
    b = args.batch
    x = torch.randn(b, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (b,), device=dev)
    ceiling = _rate(lambda: step(x, y), args.steps, args.warmup, b)
    rows = [{"arch": arch, "source": "synthetic (ceiling)", "img_per_s": ceiling, "of_ceiling": 1.0,
             "of_design": ceiling / DESIGN_CEILING.get(arch, float("nan"))}]
    print("row", json.dumps(rows[-1]), flush=True)
    split = open_split(args.shards)
    mean = load_mean(args.mean, split.size).to(dev)
    gen = torch.Generator().manual_seed(0)
    aug_compiled = torch.compile(crop_flip, dynamic=False)
    fused = {}  # one compiled graph per variant, shared across loader modes
    for mode in args.modes:
        t0 = time.perf_counter()
        mode_kind, _, how = mode.partition("+")  # 'cache+fused': augmentation compiled into the forward
        kind = mode_kind
        if how in ("fused", "graph") and how not in fused:
            fused[how] = fused_step(net, opt, mean, 224, "reduce-overhead" if how == "graph" else None, renorm)
        src = make_source(split, b, shuffle=True, mode=kind, workers=args.workers, device=dev)
        setup_s = time.perf_counter() - t0
        if kind == "stream" and "stream alone" not in {r["source"] for r in rows}:
            alone = measure(src, args.steps)
            rows.append({"arch": arch, "source": "stream alone", "img_per_s": alone, "of_ceiling": alone / ceiling,
                         "of_design": float("nan"), "setup_s": setup_s})
            print("row", json.dumps(rows[-1]), flush=True)
        batches = endless(src)

        def e2e(batches=batches) -> None:
            images, labels = next(batches)
            draws = crop_draws(len(images), images.shape[-1], 224, gen, dev)
            if how in fused:
                fused[how](images, labels, draws)
                return
            aug = aug_compiled if how == "aug" else crop_flip
            step(aug(images, mean, draws, 224).contiguous(memory_format=torch.channels_last), labels)

        try:
            rate = _rate(e2e, args.steps, args.warmup, b)
        except Exception as e:  # one failing variant (a compile mode, say) must not lose the table
            print("mode", mode, "failed:", repr(e)[:500], flush=True)
            continue
        finally:
            batches.close()  # a stream's workers finish their jobs and stop with it
            del batches, src
        rows.append({"arch": arch, "source": f"shards, {mode}", "img_per_s": rate, "of_ceiling": rate / ceiling,
                     "of_design": rate / DESIGN_CEILING.get(arch, float("nan")), "setup_s": setup_s})
        print("row", json.dumps(rows[-1]), flush=True)  # a partial table survives a timeout
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--mean", required=True)
    p.add_argument("--archs", nargs="+", default=["ours", "krizhevsky"])
    p.add_argument("--modes", nargs="+", default=["cache+aug", "stream+aug"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--device", default="cuda")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (small values for a CPU dry run)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--filter-radius", type=float, default=None,
                   help="renormalize conv filters to this RMS after every step (TrainConfig.filter_radius); "
                        "off by default")
    p.add_argument("--json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.backends.cudnn.benchmark = True
    rows = [r for arch in args.archs for r in bench(arch, args)]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    renorm = f", filter radius {args.filter_radius}" if args.filter_radius else ""
    print(f"\n{name}, batch {args.batch}, {args.steps} timed steps{renorm}")
    print("| arch | source | img/s | of ceiling | of DESIGN.md ceiling |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['source']} | {r['img_per_s']:,.0f} | {r['of_ceiling']:.3f} | {r['of_design']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
