"""Training of the Table 1 networks (Section 3.1), one GPU or DDP under torchrun, and its CLI.

    python -m zf_pipeline.train --shards DIR --val-shards DIR --mean FILE --out DIR --arch ours --epochs 70
    torchrun --nproc-per-node 8 -m zf_pipeline.train ...   # DDP: each rank reads its own shards

The run folder gets ``last.pt`` every epoch (a killed run resumes from it), ``epoch_NNN.pt`` for the
epochs that the feature-evolution figure (Fig. 3) shows, ``metrics.jsonl`` / ``metrics.parquet`` (one
row per epoch), ``result.json`` (final center and 10-crop errors, train error), ``val_predictions.npz`` (the
10-crop probabilities of every validation image) and ``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from zf_pipeline.analysis.filters import high_frequency_summary, median_high_frequency_share
from zf_pipeline.data.loader import crop_draws, crop_flip, epoch_seed, load_mean, make_source, open_split
from zf_pipeline.distributed import dist_env
from zf_pipeline.evaluate import predict, save_predictions, topk_correct
from zf_pipeline.io import atomic_path, write_bytes_atomic
from zf_pipeline.models.checkpoint import (
    check_free_space,
    checkpoint_bytes,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from zf_pipeline.models.zfnet import ZFNet, build, filter_renormalizer, init_weights, kaiming_init, variant

log = logging.getLogger(__name__)

# Fig. 3 shows the strongest activations at these epochs: their checkpoints are kept.
FIG3_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
# The final 10-crop test's probabilities per validation image, in a run's folder (Table 2's ensembles)
PREDICTIONS = "val_predictions.npz"


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's (Section 3.1) unless a comment says otherwise."""

    shards: str  # training split folder (shard format contract)
    val_shards: str  # validation split folder
    mean: str  # pixel_mean.npy of the training split
    out: str  # run folder
    arch: str = "ours"  # a name of zf_pipeline.models.VARIANTS
    width: float = 1.0  # width multiplier (the CPU demo uses ~0.25)
    epochs: int = 70
    batch_size: int = 128
    lr: float = 1e-2
    momentum: float = 0.9
    # The paper does not state it; Krizhevsky et al. (whose code the paper builds on) used 5e-4.
    weight_decay: float = 5e-4
    # 'normal': N(0, init_std^2) weights, zero biases (the paper). Without normalization layers that
    # start can idle for several epochs before the loss moves; 'kaiming' (He normal) learns at once
    # and suits short runs.
    init: str = "normal"
    init_std: float = 1e-2
    # conv1 alone from N(0, conv1_init_std^2), zero bias, whatever `init` gave it (None: as `init`). Small
    # layer-1 weights on larger inputs (input_scale) move fast relative to their start noise: smooth filters.
    conv1_init_std: float | None = None
    schedule: str = "plateau"  # 'plateau': lr x lr_factor when val top-1 stops improving; 'cosine': to 0 per step
    lr_factor: float = 0.1
    # What the plateau schedule watches: 'val' (val top-1, the paper's practice on ImageNet) or 'train' (the
    # epoch's training loss), for runs whose val images are a test set that must not steer training.
    plateau_on: str = "val"
    patience: int = 5  # epochs without a val top-1 improvement before the lr drops
    min_lr: float = 0.0  # plateau drops stop at this floor (0: none)
    # The run ends at its N-th plateau (None: runs all epochs), a plateau at the floor counting as a drop;
    # with lr_factor 0.1, no floor and N = 3 the last epochs train at lr / 100.
    max_lr_drops: int | None = None
    # Linear lr ramp over the first epochs (Goyal et al. 2017), per step; 0: none (the paper). Without
    # normalization layers, full-size first steps can kill a net on a small split (docs/results/reproduction.md).
    warmup_epochs: int = 0
    crop: int = 224  # random crop side (the demo: 112 of 128)
    input_scale: float = 1.0  # multiplies (pixel - mean); the paper feeds raw 0..255 differences
    # After every step each conv filter whose RMS exceeds this radius is scaled back to it (None: off). The
    # paper's ECCV text uses 1e-1 for inputs spanning about [-128, 128], i.e. input_scale 1; conv1 computes
    # w . (s x), so at input_scale s the same layer-1 constraint is a radius of 1e-1 / s (6.4 at s = 1/64).
    filter_radius: float | None = None
    seed: int = 0
    device: str = "auto"  # 'auto' = cuda if available
    # 'cache' (decode once, keep on the device), 'stream' (decode every epoch in `workers` processes) or
    # 'auto': the cache when the rank's decoded split fits cache_budget_gb, else the stream
    loader: str = "auto"
    cache_budget_gb: float = 0.0  # 0: half the GPU's memory (a quarter of the host's on the CPU)
    workers: int = 4
    compile: bool = False  # torch.compile the network (GPU)
    amp: bool = True  # bf16 autocast on the GPU
    channels_last: bool = True
    log_every: int = 100  # steps between progress lines
    keep_epochs: tuple[int, ...] = FIG3_EPOCHS
    checkpoint_every: int = 1  # epochs between last.pt writes (and the last epoch, and keep_epochs)
    final_ten_crop: bool = True  # evaluate the last epoch with 10 crops
    final_train_error: bool = True  # Table 1's train error: center-crop top-1 on the training split
    deterministic: bool = False  # bitwise-reproducible kernels (CPU tests of resume)
    resume: bool = True  # continue from out/last.pt when it exists
    stop_after: int | None = None  # end this invocation after that many epochs (time-sliced jobs)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class RunResult:
    """What a run produced: the folder, the per-epoch metrics, the final errors and the trained network."""

    out: Path
    metrics: list[dict]
    final: dict
    model: ZFNet = field(repr=False)
    checkpoint: Path


def initialize(net: ZFNet, cfg: TrainConfig) -> None:
    """The start ``cfg`` asks for: N(0, init_std^2) (``build`` drew it) or He for every layer, then conv1
    from N(0, conv1_init_std^2) when set."""
    if cfg.init == "kaiming":
        kaiming_init(net)
    elif cfg.init != "normal":
        raise ValueError(f"init must be 'normal' or 'kaiming', not {cfg.init!r}")
    if cfg.conv1_init_std is not None:
        with torch.random.fork_rng(devices=[]):  # the global stream (dropout) stays as without the option
            torch.manual_seed(cfg.seed)
            init_weights(net.get_submodule("conv1"), cfg.conv1_init_std)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """SGD with momentum and weight decay (fused kernels on the GPU), and the lr schedule."""
    cuda = next(model.parameters()).is_cuda
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          fused=cuda or None)
    if cfg.schedule == "plateau":
        if cfg.min_lr > cfg.lr:
            raise ValueError(f"min_lr {cfg.min_lr} is above the starting lr {cfg.lr}")
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor, patience=cfg.patience,
                                                           min_lr=cfg.min_lr)
    elif cfg.min_lr or cfg.max_lr_drops is not None:
        raise ValueError(f"min_lr and max_lr_drops bound the plateau schedule's drops, not {cfg.schedule!r}")
    elif cfg.schedule == "cosine":
        total = max(1, cfg.epochs * steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    else:
        raise ValueError(f"schedule must be 'plateau' or 'cosine', not {cfg.schedule!r}")
    return opt, sched


def make_step(model: nn.Module, opt: torch.optim.Optimizer, amp: bool,
              after_update: Callable[[], None] | None = None) -> Callable:
    """One SGD step ``step(x, y) -> (loss, logits)`` under bf16 autocast when ``amp``; ``after_update()``
    runs right after the optimizer's update (filter renormalization)."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, torch.bfloat16) if amp else nullcontext():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_update is not None:
            after_update()
        return loss.detach(), logits.detach()

    return step


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _errors(net: nn.Module, source, mean, cfg: TrainConfig, mode: str, amp: bool,
            keep: Path | None = None) -> dict[str, float]:
    """Top-1/5 error (%) over the whole split, summed across DDP ranks; with ``keep``, rank 0 saves every
    rank's probabilities there (Table 2's ensembles average them)."""
    probs, labels = predict(net, source.epoch(0), mean, cfg.crop, mode, cfg.input_scale, amp)
    if keep is not None:
        probs_all, labels_all = _gather_rows(probs), _gather_rows(labels)
        if not dist.is_initialized() or dist.get_rank() == 0:
            save_predictions(keep, probs_all, labels_all, dist.get_world_size() if dist.is_initialized() else 1)
    c = topk_correct(probs, labels)
    c1, c5, n = _all_sum([c[1], c[5], len(labels)], mean.device)
    return {"top1_err": 100 * (1 - c1 / n), "top5_err": 100 * (1 - c5 / n), "n": int(n)}


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every DDP rank's rows of ``t`` in rank order (ranks may hold different counts); ``t`` without DDP."""
    if not dist.is_initialized():
        return t
    count = torch.tensor([len(t)], device=t.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def write_metrics(out: Path, metrics: list[dict]) -> None:
    """metrics.jsonl and metrics.parquet, rewritten atomically after every epoch."""
    write_bytes_atomic(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics).encode())
    if metrics:
        with atomic_path(out / "metrics.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(metrics), tmp)


def plot_learning_curve(metrics: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Train loss and train / val top-1 error per epoch, with lr drops marked; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [m["epoch"] for m in metrics]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [m["train_loss"] for m in metrics], label="train loss")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.legend()
    b.plot(ep, [m["train_top1_err"] for m in metrics], label="train top-1 (augmented)")
    b.plot(ep, [m["val_top1_err"] for m in metrics], label="val top-1 (center crop)")
    b.plot(ep, [m["val_top5_err"] for m in metrics], label="val top-5 (center crop)")
    for prev, m in zip(metrics, metrics[1:]):
        if m["lr"] < prev["lr"] * 0.5:
            b.axvline(m["epoch"], color="grey", lw=0.5, ls="--")
    b.set_xlabel("epoch")
    b.set_ylabel("error %")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def disk_needed(cfg: TrainConfig, num_classes: int, start: int = 0) -> int:
    """Bytes a run's checkpoints take at most from epoch ``start`` on: last.pt, its temporary copy while it is
    rewritten, and the Fig. 3 snapshots still to come (one more where a stop ends the run)."""
    arch = variant(cfg.arch, num_classes=num_classes, width=cfg.width, input_size=cfg.crop)
    with torch.device("meta"):  # the parameters' shapes, no memory
        size = checkpoint_bytes(ZFNet(arch))
    snapshots = sum(start < e <= cfg.epochs for e in set(cfg.keep_epochs)) + bool(cfg.keep_epochs)
    return (2 + snapshots) * size


def check_disk(cfgs: Sequence[TrainConfig], folder: str | os.PathLike) -> None:
    """Fail at once when ``folder``'s disk cannot hold the checkpoints of all ``cfgs`` side by side (runs trained
    together, or one after another: each keeps its own)."""
    if cfgs:
        classes = {shards: len(open_split(shards).classes) for shards in {c.shards for c in cfgs}}
        need = sum(disk_needed(c, classes[c.shards]) for c in cfgs)
        Path(folder).mkdir(parents=True, exist_ok=True)
        check_free_space(folder, need, f"{len(cfgs)} runs' checkpoints")


def resolve_device(name: str) -> torch.device:
    """A TrainConfig's ``device``: 'auto' is cuda when one is visible, else the CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def train(cfg: TrainConfig) -> RunResult:
    """Train (or resume) one network as configured; returns when ``cfg.epochs`` (or ``stop_after``) are done."""
    rank, world, local = dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:  # "cuda": this rank's GPU (set_device needs an index)
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    amp = cfg.amp and device.type == "cuda"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    split, val_split = open_split(cfg.shards), open_split(cfg.val_shards)
    if val_split.classes != split.classes:
        raise ValueError(f"{cfg.val_shards}: classes.json differs from {cfg.shards}'s; both splits need one class list")
    mean = load_mean(cfg.mean, split.size).to(device)
    arch = variant(cfg.arch, num_classes=len(split.classes), width=cfg.width, input_size=cfg.crop)
    net = build(arch, init_std=cfg.init_std, seed=cfg.seed)
    initialize(net, cfg)
    if cfg.filter_radius is not None and not cfg.filter_radius > 0:
        raise ValueError(f"filter_radius must be a positive RMS (or None: off), not {cfg.filter_radius!r}")
    if cfg.max_lr_drops is not None and cfg.max_lr_drops < 1:
        raise ValueError(f"max_lr_drops must be at least 1 (or None: no limit), not {cfg.max_lr_drops!r}")
    if cfg.plateau_on not in ("val", "train"):
        raise ValueError(f"plateau_on must be 'val' or 'train', not {cfg.plateau_on!r}")
    net = net.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)

    src = dict(mode=cfg.loader, seed=cfg.seed, workers=cfg.workers, rank=rank, world_size=world, device=device,
               budget=int(cfg.cache_budget_gb * 1e9) or None)
    train_src = make_source(split, cfg.batch_size, shuffle=True, **src)
    if len(train_src) == 0:  # full batches only (drop_last): an epoch would take no step at all
        raise ValueError(f"{cfg.shards}: {split.num_images} training images make no full batch of {cfg.batch_size} "
                         f"per rank ({world} ranks); lower batch_size")
    val_src = make_source(val_split, 2 * cfg.batch_size, shuffle=False, **src)
    opt, sched = make_optimizer(net, cfg, len(train_src))
    warmup_steps = cfg.warmup_epochs * len(train_src)

    metrics: list[dict] = []
    start = 0
    last = out / "last.pt"
    if cfg.resume and last.is_file():
        state = load_checkpoint(last, device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng = state["rng"]  # loaded onto `device`, but the RNG setters take CPU byte tensors
        set_rng_state({"cpu": rng["cpu"].cpu(), **({"cuda": [t.cpu() for t in rng["cuda"]]} if "cuda" in rng else {})})
        start, metrics = state["epoch"], state["metrics"]
        log.info("resumed %s at epoch %d", last, start)
    check_free_space(out, disk_needed(cfg, len(split.classes), start), f"{cfg.arch}'s checkpoints")
    drops = metrics[-1].get("lr_drops", 0) if metrics else 0
    stopped = cfg.max_lr_drops is not None and drops >= cfg.max_lr_drops  # a resumed run that had ended

    model: nn.Module = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    renorm = filter_renormalizer(net, cfg.filter_radius, cfg.compile) if cfg.filter_radius else None
    step = make_step(model, opt, amp, renorm)
    # compiled, Section 3.1's crop / flip / mean subtraction is one fused gather kernel instead of ~8 eager ones
    augment = torch.compile(crop_flip, dynamic=False) if cfg.compile else crop_flip

    end = start if stopped else cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start + cfg.stop_after)
    t_run = time.perf_counter()
    for epoch in range(start, end):
        model.train()
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, rank))
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        wrong = torch.zeros((), device=device, dtype=torch.int64)
        seen, t0, t_log = 0, time.perf_counter(), time.perf_counter()
        for i, (images, labels) in enumerate(train_src.epoch(epoch)):
            if (done := epoch * len(train_src) + i) < warmup_steps:
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * (done + 1) / warmup_steps
            draws = crop_draws(len(images), split.size, cfg.crop, gen, device)
            x = augment(images, mean, draws, cfg.crop, cfg.input_scale)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss, logits = step(x, labels)
            loss_sum += loss * len(labels)
            wrong += (logits.argmax(1) != labels).sum()
            seen += len(labels)
            if rank == 0 and cfg.log_every and (i + 1) % cfg.log_every == 0:
                now = time.perf_counter()
                log.info("epoch %d step %d/%d loss %.4f lr %.2e %.0f img/s", epoch + 1, i + 1, len(train_src),
                         loss.item(), opt.param_groups[0]["lr"], cfg.log_every * len(labels) * world / (now - t_log))
                t_log = now
            if cfg.schedule == "cosine":
                sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_s = time.perf_counter() - t0
        tot_loss, tot_wrong, tot_seen = _all_sum([loss_sum.item(), wrong.item(), seen], device)
        val = _errors(net, val_src, mean, cfg, "center", amp)
        lr = opt.param_groups[0]["lr"]
        if cfg.schedule == "plateau" and epoch + 1 > cfg.warmup_epochs:  # no drop while still ramping up
            best = sched.best
            sched.step(val["top1_err"] if cfg.plateau_on == "val" else tot_loss / tot_seen)
            # a plateau resets the bad-epoch count without a new best: a drop, or one the floor held back
            drops += int(sched.num_bad_epochs == 0 and sched.best == best)
            stopped = cfg.max_lr_drops is not None and drops >= cfg.max_lr_drops
        metrics.append({
            "epoch": epoch + 1,
            "train_loss": tot_loss / tot_seen,
            "train_top1_err": 100 * tot_wrong / tot_seen,
            "val_top1_err": val["top1_err"],
            "val_top5_err": val["top5_err"],
            "lr": lr,
            "lr_drops": drops,
            "conv1_hf_median": median_high_frequency_share(net),
            "img_per_s": tot_seen / epoch_s,
            "epoch_s": epoch_s,
            "wall_s": time.perf_counter() - t_run,
        })
        if rank == 0:
            m = metrics[-1]
            log.info("epoch %d/%d train loss %.4f err %.2f%% | val top-1 %.2f%% top-5 %.2f%% | lr %.1e | %.0f img/s",
                     epoch + 1, cfg.epochs, m["train_loss"], m["train_top1_err"], m["val_top1_err"],
                     m["val_top5_err"], lr, m["img_per_s"])
            # A full checkpoint is ~0.8 GB at full width: short runs on small splits spend most of an
            # epoch writing it, hence checkpoint_every (a killed run resumes from the last one written).
            if (epoch + 1) % cfg.checkpoint_every == 0 or stopped or epoch + 1 in (end, *cfg.keep_epochs):
                save_checkpoint(last, net, arch, epoch=epoch + 1, optimizer=opt, scheduler=sched,
                                train_config=cfg.to_dict(), metrics=metrics)
            # A run ended by max_lr_drops keeps its last epoch too, so Fig. 3's last column is the final model.
            if epoch + 1 in cfg.keep_epochs or (stopped and cfg.keep_epochs):
                with atomic_path(out / f"epoch_{epoch + 1:03d}.pt") as tmp:
                    shutil.copyfile(last, tmp)
            write_metrics(out, metrics)
        if stopped:
            log.info("plateau %d of max_lr_drops: the run ends at epoch %d", drops, epoch + 1)
            break

    final: dict = {}
    if stopped or end == cfg.epochs:
        final = _final(net, val_src, train_split_src(split, cfg, src), mean, cfg, amp)
        if rank == 0:
            hf = high_frequency_summary(net)
            final.update(arch=cfg.arch, seed=cfg.seed, epochs=cfg.epochs, epochs_run=len(metrics), lr_drops=drops,
                         conv1_hf_median=hf["median"], conv1_hf=hf, images_train=split.num_images,
                         images_val=val_split.num_images)
            write_bytes_atomic(out / "result.json", json.dumps(final, indent=1).encode())
            if metrics:
                plot_learning_curve(
                    metrics, out / "learning_curve.png", f"{cfg.arch} on {Path(cfg.shards).resolve().parent.name}"
                )
    if world > 1:
        dist.barrier()
    return RunResult(out, metrics, final, net, last)


def train_split_src(split, cfg: TrainConfig, src: dict):
    """The training split without shuffling, for Table 1's train error; None when not asked for."""
    if not cfg.final_train_error:
        return None
    return make_source(split, 2 * cfg.batch_size, shuffle=False, **src)


def _final(net, val_src, train_src, mean, cfg: TrainConfig, amp: bool) -> dict:
    """Final errors: val center crop, val 10 crops (their probabilities kept in ``PREDICTIONS``), and train
    (center crop, eval mode) as in Table 1."""
    final = {f"val_center_{k}": v for k, v in _errors(net, val_src, mean, cfg, "center", amp).items()}
    if cfg.final_ten_crop:
        ten = _errors(net, val_src, mean, cfg, "ten", amp, keep=Path(cfg.out) / PREDICTIONS)
        final.update({f"val_10crop_{k}": v for k, v in ten.items()})
    if train_src is not None:
        final.update({f"train_center_{k}": v for k, v in _errors(net, train_src, mean, cfg, "center", amp).items()})
    log.info("final: %s", final)
    return final


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """TrainConfig from command-line flags (one ``--flag-name`` per field)."""
    p = argparse.ArgumentParser(prog="python -m zf_pipeline.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.name == "keep_epochs":
            p.add_argument(flag, type=int, nargs="*", default=f.default)
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(f.type, str)
            p.add_argument(flag, type=kind, required=required, default=None if required else f.default)
    ns = vars(p.parse_args(argv))
    ns["keep_epochs"] = tuple(ns["keep_epochs"])
    return TrainConfig(**ns)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = train(parse_args(argv))
    if dist.is_initialized():
        dist.destroy_process_group()
    print(json.dumps(result.final))


if __name__ == "__main__":
    main()
