"""Benchmark the deconvnet and occlusion against same-run baselines.

1. Projections: the top-9 activations of every map of layers 1-5 (over a pool of images),
   each projected to pixels with ``zf_pipeline.deconv.project``. Baselines, same run, same
   seeds: plain autograd (one batched backward pass of the same units, a lower bound for any
   method that walks the net down once per seed), and captum's ``NeuronDeconvolution`` one seed
   at a time (what a user of an attribution library runs), timed on a subset.
2. Occlusion (Fig. 5): occlusion maps per second against the ideal (forward images/s) /
   (occluder positions), forward images/s measured in the same run on the same batch size and
   dtype. Goal: ratio >= 0.8, for ``occlusion_sensitivities`` over ``--occlusion-images`` images in
   one call (their copies share batches); one image per call is shown beside it.

On the H100:   python benchmarks/bench_deconv.py --device cuda --variant ours
On a CPU:      python benchmarks/bench_deconv.py --device cpu --width 0.1 --images 16 --maps-per-layer 4 \
                   --occlusion-images 2
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from zf_pipeline.analysis.occlusion import (
    OcclusionResult,
    occlusion_sensitivities,
    occlusion_sensitivity,
    square_positions,
)
from zf_pipeline.deconv import project
from zf_pipeline.models.zfnet import CONV_LAYERS, LAYER_OUTPUT, ZFNet, build, variant


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Seconds per call of ``fn`` after one warm-up call, synchronizing the device."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def top9_seeds(model: ZFNet, images: torch.Tensor, layer: str, maps: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """(image_index, channel, y, x) of the 9 strongest activations of each of the first ``maps`` maps."""
    best_v, best_i, best_f = [], [], []
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            act = model.forward_layers(images[start : start + chunk], [layer])[layer][:, :maps].float()
            v, f = act.flatten(2).max(2)  # [B, C]
            best_v.append(v)
            best_f.append(f)
            best_i.append(torch.arange(start, start + len(act), device=act.device)[:, None].expand_as(v))
    v, i, f = (torch.cat(t) for t in (best_v, best_i, best_f))
    top = v.topk(min(9, len(v)), dim=0).indices  # [9, C]
    c = torch.arange(v.shape[1], device=v.device).expand_as(top)
    width = act.shape[-1]
    return i[top, c].flatten(), c.flatten(), (f[top, c] // width).flatten(), (f[top, c] % width).flatten()


def autograd_baseline(
    model: ZFNet, images: torch.Tensor, layer: str, seeds: tuple[torch.Tensor, ...], batch: int
) -> None:
    """Input gradients of the same units, batch by batch: one forward and one backward per chunk."""
    idx, ch, ys, xs = seeds
    for start in range(0, len(idx), batch):
        sl = slice(start, start + batch)
        x = images[idx[sl]].clone().requires_grad_(True)
        act = model.forward_layers(x, [layer])[layer]
        k = torch.arange(len(x), device=x.device)
        torch.autograd.grad(act[k, ch[sl], ys[sl], xs[sl]].sum(), x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", default="ours", help="Table 1 architecture (ours: 2,400 maps; krizhevsky: 1,376)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--images", type=int, default=512, help="pool of images the top-9 are mined from")
    p.add_argument("--maps-per-layer", type=int, default=0, help="0 = every map")
    p.add_argument("--batch-size", type=int, default=256, help="seeds per pass down")
    p.add_argument(
        "--captum-seeds", type=int, default=64, help="seeds for the one-at-a-time captum baseline (0 = skip)"
    )
    p.add_argument("--occlusion-images", type=int, default=32, help="images per occlusion_sensitivities call")
    p.add_argument("--occlusion-size", type=int, default=48)
    p.add_argument("--occlusion-stride", type=int, default=8)
    p.add_argument("--occlusion-batch", type=int, default=256)
    p.add_argument("--amp", action="store_true", help="bf16 autocast for every timed path")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # captum's notice, once per layer

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = build(variant(args.variant, width=args.width, input_size=args.input_size), seed=0).to(device).eval()
    images = torch.randn(
        args.images, 3, args.input_size, args.input_size, generator=torch.Generator().manual_seed(0)
    ).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# deconvnet benchmark: {args.variant} width {args.width}, {args.input_size}px, {name}, amp={args.amp}\n")

    rows, total_n, total_s = [], 0, 0.0
    with amp:
        for layer in CONV_LAYERS:
            if LAYER_OUTPUT[layer] not in model._modules:
                continue
            maps = model.get_submodule(layer).out_channels if args.maps_per_layer <= 0 else args.maps_per_layer
            seeds = top9_seeds(model, images, layer, maps, args.batch_size)
            idx, ch, ys, xs = seeds
            ours = timed(
                lambda: project(model, images, layer, ch, ys, xs, image_index=idx, batch_size=args.batch_size), device
            )
            base = timed(lambda: autograd_baseline(model, images, layer, seeds, args.batch_size), device)
            cap = float("nan")
            if args.captum_seeds:
                from captum.attr import NeuronDeconvolution

                deconv = NeuronDeconvolution(model, getattr(model, LAYER_OUTPUT[layer]))
                m = min(args.captum_seeds, len(idx))

                def one_by_one() -> None:
                    for k in range(m):
                        x = images[idx[k] : idx[k] + 1].clone().requires_grad_(True)
                        deconv.attribute(x, neuron_selector=(int(ch[k]), int(ys[k]), int(xs[k])))

                cap = timed(one_by_one, device) / m
            n = len(idx)
            total_n, total_s = total_n + n, total_s + ours
            rows.append((layer, n, ours, 1e3 * ours / n, 1e3 * base / n, 1e3 * cap))

    print(
        "| layer | projections | ours s | ours ms/proj | autograd ms/proj | captum 1-by-1 ms/proj | speedup vs captum |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for layer, n, s, ms, base_ms, cap_ms in rows:
        print(f"| {layer} | {n} | {s:.3f} | {ms:.4f} | {base_ms:.4f} | {cap_ms:.3f} | {cap_ms / ms:.0f}x |")
    print(f"| all | {total_n} | {total_s:.3f} | {1e3 * total_s / total_n:.4f} | | | |\n")

    h = w = args.input_size
    ys_pos, xs_pos = square_positions(h, w, args.occlusion_size, args.occlusion_stride)
    positions = len(ys_pos) * len(xs_pos)
    batch = images[: args.occlusion_batch]
    if len(batch) < args.occlusion_batch:
        batch = batch.repeat(-(-args.occlusion_batch // len(batch)), 1, 1, 1)[: args.occlusion_batch]
    k, occ_args = args.occlusion_images, (args.occlusion_size, args.occlusion_stride)
    occ_images = images[torch.arange(k, device=device) % len(images)]

    def run_many() -> list[OcclusionResult]:
        return occlusion_sensitivities(model, occ_images, [0] * k, *occ_args, batch_size=args.occlusion_batch)

    def run_one_by_one() -> list[OcclusionResult]:
        return [occlusion_sensitivity(model, x, 0, *occ_args, batch_size=args.occlusion_batch) for x in occ_images]

    with amp, torch.no_grad():
        fwd = timed(lambda: model.forward_layers(batch, ["conv5", "fc8"]), device, repeats=20)
        forward_ips = len(batch) / fwd
        many = timed(run_many, device, repeats=3)
        one_by_one = timed(run_one_by_one, device)
        pairs = list(zip(run_many(), run_one_by_one()))
    ideal = forward_ips / positions
    print(f"Occlusion: {k} images, {args.occlusion_size} px square / stride {args.occlusion_stride}, "
          f"batch {args.occlusion_batch}; forward img/s measured in this run at the same batch and dtype.\n")
    print("| occlusion path | positions/map | forward img/s | ideal maps/s | occlusion maps/s | ratio (goal >= 0.8) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, seconds in ((f"{k} images per call", many), ("one image per call", one_by_one)):
        print(
            f"| {name} | {positions} | {forward_ips:.0f} | {ideal:.2f} | {k / seconds:.2f} "
            f"| {k / seconds / ideal:.2f} |"
        )
    # The two paths batch different copies together: only rounding may differ.
    same = all(
        (a.channel, a.unit, a.base_label) == (b.channel, b.unit, b.base_label) and (a.top_label == b.top_label).all()
        for a, b in pairs
    )
    rel = {
        f: max(
            float(np.abs(getattr(a, f) - getattr(b, f)).max() / max(np.abs(getattr(b, f)).max(), 1e-30))
            for a, b in pairs
        )
        for f in ("map_activity", "true_prob", "projection")
    }
    print(
        f"\nMany images per call vs one: maps, units and top labels equal: {same}; largest difference relative to the "
        f"largest value: " + ", ".join(f"{f} {v:.1e}" for f, v in rel.items())
    )


if __name__ == "__main__":
    main()
