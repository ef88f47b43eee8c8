"""Benchmark: layer-wise extraction images/s against the compiled forward pass alone, same run, same inputs.

Synthetic preprocessed batches are made once on the device and cycled, so both sides measure the
device work and what extraction adds to it (maxima, pooling, device-to-host copies, Parquet writer
threads), not image decoding. Goal on one H100: extraction >= 0.7 x forward.

``--breakdown`` adds the activations-only pass without Parquet encoding, and the Parquet writers alone:
synthetic host copies of the device outputs (the layout ``Writers.dispatch`` takes) fed
straight to the writer threads, no GPU work, i.e. the img/s ceiling the host puts on each pass, with
the CPU time it costs (rows/s and MB/s per busy core). ``--host-only`` runs only those rows (no GPU needed).

Every extraction row says where the loop's thread spent the pass (shares of its wall time): on the CPU
(its thread CPU time: Python, kernel launches, spinning in CUDA calls), waiting for a free host slot
(the device or the writers behind by ``features.RING_SLOTS`` batches), in the tail (after its last
batch: the writers finishing their row groups), and the rest, blocked elsewhere: the GIL, or a CUDA
call that sleeps. "until tail" is the img/s up to the last batch handed over.

    python benchmarks/bench_extract.py --device cuda                    # Krizhevsky's net, bf16, compiled
    python benchmarks/bench_extract.py --device cuda --breakdown   # + the pass without Parquet encoding, writers alone
    python benchmarks/bench_extract.py --host-only --images 5120        # the writers alone, on this machine's cores
    python benchmarks/bench_extract.py --device cpu --size 64 --width 0.125 --images 256 --batch 32 --no-compile
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from zf_pipeline.features import ExtractionSummary, LayerInfo, Writers, extract
from zf_pipeline.features.outputs import layer_shapes
from zf_pipeline.features.writers import HostRing
from zf_pipeline.models.zfnet import CONV_LAYERS, FEATURE_LAYERS, build, kaiming_init, variant


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_alone(
    model: torch.nn.Module, inputs: list[torch.Tensor], steps: int, device: torch.device, amp, compile: bool
) -> float:
    """Images/s of the (compiled) full forward pass over the cycled inputs."""
    forward = torch.compile(model) if compile else model
    with torch.inference_mode(), torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
        for x in inputs[:2]:  # warm-up and compilation
            forward(x)
        synchronize(device)
        t = time.perf_counter()
        for i in range(steps):
            forward(inputs[i % len(inputs)])
        synchronize(device)
    return steps * len(inputs[0]) / (time.perf_counter() - t)


class EagerFallbacks(logging.Handler):
    """Counts extract's warnings that a compiled pass disagreed with the eager one and ran eager."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "runs eager" in record.getMessage()


class NoEncoding(Writers):
    """Writers that drop every batch: the pass still copies each batch out of its slot, but encodes nothing."""

    def dispatch(self, image_ids, host) -> None:
        pass


def extraction(model, inputs, steps: int, device, amp, compile: bool, out: Path, writers: type[Writers] = Writers,
               **layers) -> tuple[float, str]:
    """Images/s of zf_pipeline.features.extract over the same inputs (a short warm-up pass first), and
    where the loop's thread spent the timed pass. A fast wrong answer is no result: extract checks each
    compiled batch shape against the eager pass and runs eager on a disagreement (a wrong graph was seen
    on an H100, docs/results/extraction.md); such a pass is not timed as compiled, the benchmark stops."""
    labels = torch.zeros(len(inputs[0]), dtype=torch.long)

    def batches(n: int, offset: int):
        for i in range(n):
            start = (offset + i) * len(labels)
            yield inputs[i % len(inputs)], labels, [f"img{start + j:08d}" for j in range(len(labels))]

    kwargs = dict(split="bench", device=device, autocast=amp, compile=compile, writers=writers, **layers)
    fallbacks, extract_log = EagerFallbacks(), logging.getLogger("zf_pipeline.features")
    extract_log.addHandler(fallbacks)
    try:
        extract(model, batches(2, 0), out / "warmup", **kwargs)
        synchronize(device)
        waits = {"acquire": 0.0, "close": 0.0}

        def timed(name: str):
            method = getattr(HostRing, name)

            def run(*args):
                start = time.perf_counter()
                try:
                    return method(*args)
                finally:
                    waits[name] += time.perf_counter() - start

            return mock.patch.object(HostRing, name, run)

        with timed("acquire"), timed("close"):
            t, cpu = time.perf_counter(), time.thread_time()
            summary = extract(model, batches(steps, 2), out / "timed", **kwargs)
            seconds, cpu = time.perf_counter() - t, time.thread_time() - cpu
    finally:
        extract_log.removeHandler(fallbacks)
    if fallbacks.count:
        sys.exit(
            "the compiled extraction disagreed with the eager one (a compiler bug) and ran eager: no timings for it"
        )
    shutil.rmtree(out / "warmup")
    shutil.rmtree(out / "timed")
    rest = seconds - cpu - waits["acquire"] - waits["close"]
    return summary.images / seconds, (
        f"{cpu / seconds:.0%} CPU, {waits['acquire'] / seconds:.0%} slot waits, {waits['close'] / seconds:.0%} tail, "
        f"{rest / seconds:.0%} rest; until tail {summary.images / (seconds - waits['close']):,.0f} img/s")


def writers_alone(
    model, sample: torch.Tensor, steps: int, out: Path, layers=FEATURE_LAYERS, activation_layers=None
) -> str:
    """The Parquet writers of one pass fed synthetic host outputs as fast as they take them: one table row
    (img/s, then the CPU cost per busy core). Values are scaled exponentials, 0-30 % silent maps and
    ReLU'd normal vectors (half zeros), roughly what the mining benchmark generates."""
    acts = list(layers if activation_layers is None else activation_layers)
    info = layer_shapes(model, sample, acts, layers)
    n = len(sample)
    g = torch.Generator().manual_seed(0)

    def block(layer: LayerInfo) -> torch.Tensor:
        scale = torch.exp(torch.randn(layer.channels, generator=g)) * (
            torch.rand(layer.channels, generator=g) > torch.rand(1, generator=g) * 0.3
        )
        value = (scale * torch.empty(n, layer.channels).exponential_(generator=g)).half().view(torch.int16)
        return torch.stack(
            [
                value,
                torch.randint(layer.height, value.shape, generator=g).short(),
                torch.randint(layer.width, value.shape, generator=g).short(),
            ]
        )

    outputs = [
        [torch.zeros(n, dtype=torch.long).numpy(), *(block(info[a]).numpy() for a in acts),
         *(torch.randn(n, info[f].vector_length, generator=g).relu().half().numpy() for f in layers)]
        for _ in range(4)
    ]
    summary = ExtractionSummary(
        split="bench", images=0, layers=info, activation_layers=acts, feature_layers=list(layers)
    )
    start, cpu = time.perf_counter(), os.times()
    writers = Writers(out / "writers", summary)
    for step in range(steps):
        writers.dispatch([f"img{step * n + j:08d}" for j in range(n)], outputs[step % len(outputs)])
    writers.close()
    wall, after = time.perf_counter() - start, os.times()
    busy = after.user + after.system - cpu.user - cpu.system
    rows = steps * n * sum(info[a].channels for a in acts)
    values = steps * n * sum(info[f].vector_length for f in layers)
    written = sum(f.stat().st_size for f in (out / "writers").rglob("*.parquet"))
    shutil.rmtree(out / "writers")
    return (
        f"{steps * n / wall:,.0f} | {busy / wall:.1f} cores busy, {len(writers.threads)} threads; "
        f"per core: {rows / busy / 1e6:.1f}M rows/s, {values / busy / 1e6:.0f}M vector values/s, "
        f"{(6 * rows + 2 * values) / busy / 1e6:.0f} MB/s in, {written / busy / 1e6:.0f} MB/s to disk"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variant", default="krizhevsky")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224, help="input side (224 for the paper's nets)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=51_200, help="images per timed pass")
    ap.add_argument("--amp", choices=["bf16", "fp16", "none"], default="bf16")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the activations-only pass without Parquet encoding, and the writers alone",
    )
    ap.add_argument(
        "--switch-interval",
        type=float,
        nargs="*",
        default=[],
        help="with --breakdown: the activations-only pass again under each sys.setswitchinterval (s; default 0.005)",
    )
    ap.add_argument(
        "--host-only", action="store_true", help="time only the writers alone (on the CPU cores; no GPU work)"
    )
    ap.add_argument("--activations-only", action="store_true", help="skip the two configurations with feature vectors")
    args = ap.parse_args()
    if args.host_only:
        args.device, args.no_compile, args.breakdown = "cpu", True, True

    device = torch.device(args.device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp]
    compile = not args.no_compile
    model = build(variant(args.variant, width=args.width, input_size=args.size), seed=0)
    kaiming_init(model)  # keeps activations of random inputs O(1): the float16 map maxima must stay finite
    model = model.eval().to(device)
    model = model.to(memory_format=torch.channels_last)
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = [
        torch.randn(args.batch, 3, args.size, args.size, generator=g)
        .to(device)
        .contiguous(memory_format=torch.channels_last)
        for _ in range(4)
    ]
    steps = max(2, args.images // args.batch)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, {os.cpu_count()} cores, {args.variant} width {args.width}, {args.size} px, batch {args.batch}, "
          f"{steps * args.batch} images, amp {args.amp}, compile {compile}\n")

    out = Path(tempfile.mkdtemp(prefix="zf-bench-extract-"))
    configs = {
        "extract: activations of conv1-5, no features": dict(layers=(), activation_layers=CONV_LAYERS),
        "extract: activations conv1-5, features conv5/fc6/fc7": dict(
            layers=("conv5", "fc6", "fc7"), activation_layers=CONV_LAYERS
        ),
        "extract: defaults (all 7 layers, both tables)": dict(layers=FEATURE_LAYERS),
    }
    if args.activations_only:
        configs = dict(list(configs.items())[:1])
    try:
        if args.host_only:
            print("| writers alone, synthetic outputs | img/s | CPU cost |\n| --- | --- | --- |")
            for label, layers in configs.items():
                print(
                    f"| {label.removeprefix('extract: ')} | {writers_alone(model, inputs[0], steps, out, **layers)} |",
                    flush=True,
                )
            return
        base = forward_alone(model, inputs, steps, device, amp, compile)
        print("| pass | img/s | vs forward alone | the loop's thread |\n| --- | --- | --- | --- |")
        print(f"| forward pass alone (to fc8){' compiled' if compile else ''} | {base:,.0f} | 1.00 | |", flush=True)
        for label, layers in configs.items():
            rate, loop = extraction(model, inputs, steps, device, amp, compile, out, **layers)
            print(f"| {label} | {rate:,.0f} | {rate / base:.2f} | {loop} |", flush=True)
        if args.breakdown:  # where the time goes: the same activations-only pass without the Parquet encoding
            acts = configs["extract: activations of conv1-5, no features"]
            rate, loop = extraction(model, inputs, steps, device, amp, compile, out, writers=NoEncoding, **acts)
            print(
                f"| activations-only pass, no Parquet writers | {rate:,.0f} | {rate / base:.2f} | {loop} |", flush=True
            )
            default = sys.getswitchinterval()  # how long a thread may keep the GIL from the others
            for interval in args.switch_interval:
                sys.setswitchinterval(interval)
                try:
                    rate, loop = extraction(model, inputs, steps, device, amp, compile, out, **acts)
                finally:
                    sys.setswitchinterval(default)
                print(
                    f"| activations-only pass, GIL switch interval {interval * 1e3:g} ms | {rate:,.0f} "
                    f"| {rate / base:.2f} | {loop} |",
                    flush=True,
                )
            print(
                "\n| writers alone, synthetic outputs, no GPU work | img/s (the host's ceiling) | CPU cost |"
                "\n| --- | --- | --- |"
            )
            for label, layers in configs.items():
                print(
                    f"| {label.removeprefix('extract: ')} | {writers_alone(model, inputs[0], steps, out, **layers)} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
