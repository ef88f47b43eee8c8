"""Where do extraction's non-finite map maxima come from? Per-layer max |activation| and NaN counts.

    python benchmarks/diagnose_extract.py [--checkpoint last.pt --shards DIR --mean FILE --input-scale S --crop C]
    python benchmarks/diagnose_extract.py --compare --no-random --checkpoint ...   (docs/results/extraction.md)

``--compare`` instead sets compiled passes against the eager one, per batch: the forward and ``maxima_and_vectors``
in one compiled graph, the forward compiled alone, and both compiled apart (what ``extract`` does).

For a He-initialized Krizhevsky net on random inputs (and, given a checkpoint, for the first batches of
a shard folder), runs the forward pass eagerly and compiled (``model.forward_layers``, compiled as
``features.extract(compile=True)`` does) followed by ``features.maxima_and_vectors``, in float32 and under bf16
autocast, and prints one line per (case, batch).
"""

from __future__ import annotations

import argparse

import torch

from zf_pipeline.data.loader import load_mean, network_inputs, open_split
from zf_pipeline.features import maxima_and_vectors
from zf_pipeline.models.checkpoint import load_model
from zf_pipeline.models.zfnet import CONV_LAYERS, FEATURE_LAYERS, build, kaiming_init, variant


def report(name: str, model, batches: list[torch.Tensor], compiled_modes: tuple[bool, ...]) -> None:
    layers = [n for n in FEATURE_LAYERS if n in model.layers]
    for compiled in compiled_modes:
        forward = torch.compile(model.forward_layers, dynamic=False) if compiled else model.forward_layers
        for amp in (None, torch.bfloat16):
            with torch.inference_mode(), torch.autocast("cuda", amp or torch.float32, enabled=amp is not None):
                for i, x in enumerate(batches):
                    acts = forward(x, tuple(layers))
                    value, _, _ = maxima_and_vectors(model, acts, [n for n in layers if n in CONV_LAYERS], layers)
                    stats = " ".join(
                        f"{n}:{a.float().abs().max().item():.3g}/{a.isnan().sum().item()}" for n, a in acts.items()
                    )
                    print(
                        f"{name} compiled={compiled} amp={amp} batch {i}: value finite={value.isfinite().all().item()} "
                        f"max={value.float().max().item():.3g} | max|act|/nan {stats}",
                        flush=True,
                    )


def compare(name: str, model, batches: list[torch.Tensor]) -> None:
    """Per (case, batch): the map maxima's largest |difference| from eager (and the largest |maximum|), the
    maxima found at another position, the vectors' largest |difference|, and whether all maxima are finite."""
    layers = tuple(n for n in FEATURE_LAYERS if n in model.layers)

    def forward(x):
        return model.forward_layers(x, list(layers))

    def summary(acts):
        return maxima_and_vectors(model, acts, layers, layers)

    forward_c, summary_c = torch.compile(forward, dynamic=False), torch.compile(summary, dynamic=False)
    cases = {
        "one graph (forward + maxima_and_vectors)": torch.compile(lambda x: summary(forward(x)), dynamic=False),
        "compiled forward, eager maxima_and_vectors": lambda x: summary(forward_c(x)),
        "two graphs (extract's)": lambda x: summary_c(forward_c(x)),
    }
    for amp in (None, torch.bfloat16):
        with torch.inference_mode(), torch.autocast("cuda", amp or torch.float32, enabled=amp is not None):
            for i, x in enumerate(batches):
                value, pos, vectors = summary(forward(x))
                for case, run in cases.items():
                    v, p, vec = run(x)
                    dv = (value.float() - v.float()).abs().max().item()
                    dvec = max(((vectors[n].float() - vec[n].float()).abs().max().item() for n in vectors), default=0.0)
                    print(
                        f"{name} amp={amp} batch {i} {case}: maxima off by up to {dv:.3g} "
                        f"(largest {value.float().abs().max().item():.3g}), "
                        f"{int((pos != p).sum())}/{pos.numel()} at other positions, vectors off by up to {dvec:.3g}, "
                        f"finite={v.isfinite().all().item()}",
                        flush=True,
                    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint")
    p.add_argument("--shards")
    p.add_argument("--mean")
    p.add_argument("--input-scale", type=float, default=1.0)
    p.add_argument("--batches", type=int, default=3, help="batches of the shard folder")
    p.add_argument(
        "--eager-only", action="store_true", help="skip torch.compile (it crashed once with an illegal address)"
    )
    p.add_argument("--no-random", action="store_true")
    p.add_argument("--crop", type=int, default=224, help="input side (the demo's nets: 96)")
    p.add_argument("--compare", action="store_true", help="compiled passes against the eager one (see above)")
    args = p.parse_args()
    dev = torch.device("cuda")
    modes = (False,) if args.eager_only else (False, True)
    net = build(variant("krizhevsky"), seed=0)
    kaiming_init(net)
    net = net.eval().to(dev, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    xs = [
        torch.randn(256, 3, 224, 224, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
        for _ in range(2)
    ]
    show = compare if args.compare else lambda name, model, batches: report(name, model, batches, modes)
    if not args.no_random:
        show("random", net, xs)
    if args.checkpoint:
        model = load_model(args.checkpoint, dev)
        split = open_split(args.shards)
        mean = load_mean(args.mean, split.size).to(dev)
        batches = []
        for x, _, _ in network_inputs(split, mean, args.crop, 256, dev, args.input_scale):
            batches.append(x)
            if len(batches) == args.batches:
                break
        show("trained", model, batches)


if __name__ == "__main__":
    main()
