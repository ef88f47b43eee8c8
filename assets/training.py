"""Training assets (paper section 3, Tables 1 and 2).

The network is trained in-process by default; ``launcher: pipes`` runs the same entry point
(``python -m assets.pipes_train``, a thin Pipes wrapper around ``python -m zf_pipeline.train``) as a
subprocess through Dagster Pipes, so a cluster deployment swaps ``PipesSubprocessClient`` for the
Kubernetes (or another) Pipes client without touching the training code (see README, "Scaling out").
Tables 1 and 2 train several networks: ``jobs: N`` trains N at once, each ``python -m zf_pipeline.train``
in a process of its own with its log in its run folder (one run on a small split leaves most of a GPU idle).
"""

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from assets.cache import DONE, cached_stage, code_version, stage_dir
from assets.metadata import image_md, publish_table, record_md
from assets.parallel import Trainings, at_once, train_flags
from assets.resources import ZFSettings
from zf_pipeline import evaluate, render, tables, train
from zf_pipeline.analysis import filters
from zf_pipeline.data import loader
from zf_pipeline.models import checkpoint, zfnet

TRAIN_CODE = code_version(train, loader, zfnet, checkpoint, evaluate, filters)
# The demo trains on 96 px crops of its 128 px shards: a quarter-width net learns the shapes on 2 cores in a minute.
DEMO_CROP, PAPER_CROP = 96, 224
# The demo's start (docs/demo.md): He init but conv1 from N(0, 1e-2), inputs scaled by 1/16, one warm-up epoch; with
# its weight decay, its projections show the shapes instead of the init's noise.
DEMO_CONV1_INIT_STD, DEMO_INPUT_SCALE, DEMO_WARMUP_EPOCHS = 1e-2, 1 / 16, 1
# Real data: the paper's N(0, 1e-2) on raw inputs learns with a 5-epoch lr ramp, and then beat He init on Imagenette
# (docs/results/training.md, "the paper's init that learns").
PAPER_WARMUP_EPOCHS = 5


class TrainingConfig(dg.Config):
    """Section 3.1's recipe; 0 / "" mean the default (the paper's, or the demo's on the demo data)."""

    arch: str = "ours"
    width: float = 0.0  # 1.0; the demo trains a quarter-width net
    epochs: int = 0  # 70; the demo: 8
    batch_size: int = 0  # 128; the demo: 32 (more steps in its few epochs)
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0  # 5e-4 (the paper); the demo: 5e-2 (wears the init noise off conv2-5: docs/demo.md)
    init: str = ""  # 'normal' (N(0, 1e-2), the paper); the demo: 'kaiming' (starts learning at once)
    # conv1 alone from N(0, std^2) whatever `init` gives it; unset: as `init` (the demo: 1e-2); 0: as `init`
    conv1_init_std: float | None = None
    # multiplies (pixel - mean): 1 (raw differences, the paper) with 'normal', 1/64 with 'kaiming'; the demo: 1/16
    input_scale: float = 0.0
    patience: int = 5
    warmup_epochs: int | None = None  # linear lr ramp over the first epochs; unset: 5 (real data), the demo: 1
    # Each conv filter's RMS is scaled back to this radius after every update (section 3.1 of the ECCV text:
    # 1e-1 at input_scale 1); 0: off
    filter_radius: float = 0.0
    min_lr: float = 0.0  # plateau drops stop at this floor (0: none)
    max_lr_drops: int = 0  # the run ends at the plateau that drops the lr the N-th time (0: all epochs run)
    seed: int = 0
    loader: str = "auto"  # 'cache' (decoded split kept on the device), 'stream' (decoded every epoch) or 'auto'
    cache_budget_gb: float = 0.0  # 'auto' caches when the decoded split fits; 0: half the GPU's memory
    # Stream decoding processes; 0: all cores but two on a GPU, none on the CPU (they would compete with training).
    workers: int = 0
    compile: bool | None = None  # torch.compile the network and the augmentation; unset: on a GPU
    launcher: str = "inprocess"  # or 'pipes': a subprocess through Dagster Pipes


def train_config(
    settings: ZFSettings, config: TrainingConfig, train_dir: str, val_dir: str, mean: str, **over
) -> train.TrainConfig:
    """The library's TrainConfig for this asset config (output folder filled in by the cache)."""
    demo = settings.demo
    init = config.init or ("kaiming" if demo else "normal")
    conv1_std = (DEMO_CONV1_INIT_STD if demo else None) if config.conv1_init_std is None else config.conv1_init_std
    gpu = settings.torch_device().startswith("cuda")
    return train.TrainConfig(
        shards=train_dir,
        val_shards=val_dir,
        mean=mean,
        out="",
        arch=over.get("arch", config.arch),
        width=config.width or (0.25 if demo else 1.0),
        epochs=config.epochs or (8 if demo else 70),
        batch_size=config.batch_size or (32 if demo else 128),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay or (5e-2 if demo else 5e-4),
        init=init,
        conv1_init_std=conv1_std or None,
        input_scale=config.input_scale or ((DEMO_INPUT_SCALE if demo else 1 / 64) if init == "kaiming" else 1.0),
        patience=config.patience,
        warmup_epochs=(DEMO_WARMUP_EPOCHS if demo else PAPER_WARMUP_EPOCHS) if config.warmup_epochs is None
        else config.warmup_epochs,
        filter_radius=config.filter_radius or None,
        min_lr=config.min_lr,
        max_lr_drops=config.max_lr_drops or None,
        crop=DEMO_CROP if demo else PAPER_CROP,
        seed=over.get("seed", config.seed),
        keep_epochs=over.get("keep_epochs", train.FIG3_EPOCHS),
        device=settings.torch_device(),
        loader=config.loader,
        cache_budget_gb=config.cache_budget_gb,
        workers=config.workers or (max(1, (os.cpu_count() or 1) - 2) if gpu else 0),
        compile=settings.use_compile(config.compile),
    )


def run_training(
    context: dg.AssetExecutionContext | None,
    settings: ZFSettings,
    cfg: train.TrainConfig,
    upstream: list[str],
    launcher: str = "inprocess",
    pipes: dg.PipesSubprocessClient | None = None,
    log: Callable[[str], None] | None = None,
    launch: Callable[[train.TrainConfig], None] | None = None,
) -> dict:
    """Train (or find in the cache, or resume) one network; returns the run's record. ``launch`` (given by
    :func:`train_all`) replaces ``launcher``: it trains the run folder's config however it likes."""
    def build(out: Path) -> dict:
        run = dataclasses.replace(cfg, out=str(out))
        if launch is not None:
            launch(run)
        elif launcher == "pipes":
            pipes.run(command=[sys.executable, "-m", "assets.pipes_train", *train_flags(run)], context=context)
        else:
            train.train(run)
        result = json.loads((out / "result.json").read_text())
        return {"arch": cfg.arch, "final": result, "checkpoint": str(out / "last.pt"), "config": run.to_dict()}

    return cached_stage(settings.out, "train", _train_key(cfg, upstream), build, log or context.log.info)


def _train_key(cfg: train.TrainConfig, upstream: list[str]) -> list:
    """A run's cache key: what changes the network it trains (not where its files or workers are)."""
    where = ("shards", "val_shards", "mean", "out", "device", "workers")
    return [TRAIN_CODE, {k: v for k, v in cfg.to_dict().items() if k not in where}, *upstream]


def train_all(
    context: dg.AssetExecutionContext, settings: ZFSettings, cfgs: list[train.TrainConfig], upstream: list[str],
    launcher: str, jobs: int,
) -> list[dict]:
    """:func:`run_training` for each of ``cfgs``, in order; with ``jobs`` > 1 that many at once
    (:func:`assets.parallel.at_once`, each run's log in its folder's ``train.log``)."""
    # Each run checks its own room, but the runs' checkpoints stay side by side: all of them must fit
    pending = [c for c in cfgs if not (stage_dir(settings.out, "train", _train_key(c, upstream)) / DONE).exists()]
    train.check_disk(pending, settings.out)
    if jobs <= 1:
        return [run_training(context, settings, c, upstream, launcher, dg.PipesSubprocessClient()) for c in cfgs]
    return at_once(context, [functools.partial(_run_in_process, settings, c, upstream) for c in cfgs], jobs)


def _run_in_process(settings: ZFSettings, cfg: train.TrainConfig, upstream: list[str], trainings: Trainings) -> dict:
    return run_training(None, settings, cfg, upstream, log=trainings.log, launch=trainings.train)


def _table_run(
    settings: ZFSettings, config: TrainingConfig, shards: tuple[str, str, str], arch: str, seed: int
) -> train.TrainConfig:
    """One of Table 1's or 2's networks. Only zfnet_model's own (its arch and seed, shared through the cache) keeps
    Fig. 3's epoch snapshots: a table's networks would write 8 checkpoints of up to 1.8 GB each."""
    keep = train.FIG3_EPOCHS if (arch, seed) == (config.arch, config.seed) else ()
    return train_config(settings, config, *shards, arch=arch, seed=seed, keep_epochs=keep)


def _training_inputs(train_shards: dict, val_shards: dict, mean: dict) -> tuple[tuple[str, str, str], list[str]]:
    """The training assets' upstream records as train_config's paths and the run cache's key parts."""
    paths = train_shards["path"], val_shards["path"], mean["file"]
    return paths, [train_shards["fingerprint"], val_shards["fingerprint"], mean["fingerprint"]]


def _training_metadata(record: dict) -> dict:
    final = record["final"]
    out = Path(record["path"])
    meta = {**record_md(record), **{k: round(v, 2) for k, v in final.items() if isinstance(v, float)}}
    if (out / "learning_curve.png").exists():
        meta["learning_curve"] = image_md(out / "learning_curve.png", title="learning curve")
    hf = final["conv1_hf"]  # conv1's high-frequency share per filter (white noise ~0.8, smooth edges far lower)
    meta["conv1_hf_median"] = dg.MetadataValue.float(round(hf["median"], 3))
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in hf.items()}
    meta["conv1_hf_share"] = dg.MetadataValue.json(rounded)
    return meta


@dg.asset(group_name="training", kinds={"pytorch"}, code_version=TRAIN_CODE)
def zfnet_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    settings: ZFSettings,
    imagenet_train_shards: dict,
    imagenet_val_shards: dict,
    pixel_mean_image: dict,
) -> dg.Output[dict]:
    """The paper's model (Fig. 2 / Table 1 "Our model") trained as in section 3.1, with per-epoch
    checkpoints (those of Fig. 3's epochs kept), metrics and the learning curve."""
    shards, upstream = _training_inputs(imagenet_train_shards, imagenet_val_shards, pixel_mean_image)
    cfg = train_config(settings, config, *shards)
    with settings.gpu_lock(context.log.info):
        record = run_training(context, settings, cfg, upstream, config.launcher, dg.PipesSubprocessClient())
    # An explicit Output: after a Pipes session Dagster expects events rather than a bare value.
    return dg.Output(record, metadata=_training_metadata(record))


@dg.asset_check(asset=zfnet_model, blocking=True)
def zfnet_model_learned(settings: ZFSettings) -> dg.AssetCheckResult:
    """The checkpoint loads with weights_only=True and the network beats chance on the validation set."""
    record = settings.record("zfnet_model")
    model = checkpoint.load_model(record["checkpoint"])
    err = float(record["final"]["val_center_top1_err"])
    chance = 100.0 * (1 - 1 / model.config.num_classes)
    passed = err == err and err < chance
    verdict = "below" if passed else "not below"
    return dg.AssetCheckResult(
        passed=passed,
        description=f"val top-1 error {err:.2f}% is {verdict} chance ({chance:.2f}%, "
        f"{model.config.num_classes} classes)",
        metadata={"val_top1_err": err, "chance_err": round(chance, 2)},
    )


class Table1Config(TrainingConfig):
    archs: list[str] = list(tables.TABLE1_LABELS)
    # networks per architecture (seeds seed, seed+1, ...): a row is their mean, with the SD; "ours" beyond the
    # first is shared with Table 2's ensemble through the cache
    seeds: int = 1
    jobs: int = 1  # networks trained at once, each in a process of its own (its log in its run folder)


@dg.asset(group_name="training", kinds={"pytorch", "parquet"}, code_version=TRAIN_CODE)
def table1(
    context: dg.AssetExecutionContext,
    config: Table1Config,
    settings: ZFSettings,
    imagenet_train_shards: dict,
    imagenet_val_shards: dict,
    pixel_mean_image: dict,
) -> dict:
    """Table 1: each architecture variant trained with the same recipe (``seeds`` networks each, averaged, with
    the SD); train top-1, val top-1 / top-5 error (10 crops) beside the paper's, and which of its orderings the
    seeds resolve. Runs identical to zfnet_model's or Table 2's are shared through the cache."""
    shards, upstream = _training_inputs(imagenet_train_shards, imagenet_val_shards, pixel_mean_image)
    if config.seeds < 1:
        raise ValueError(f"table1: seeds must be at least 1, not {config.seeds}")
    cfgs = [_table_run(settings, config, shards, arch, config.seed + i)
            for arch in config.archs for i in range(config.seeds)]
    with settings.gpu_lock(context.log.info):
        runs = [r["path"] for r in train_all(context, settings, cfgs, upstream, config.launcher, config.jobs)]
    table, md = tables.table1_from_runs(runs)
    return {**publish_table(context, settings.out / "table1", "table1", table, md), "runs": runs}


def _ten_crop_errors(final: dict) -> dict:
    """A run's 10-crop val errors as Table 2 takes them."""
    return {"val_top1_err": final["val_10crop_top1_err"], "val_top5_err": final["val_10crop_top5_err"]}


class Table2Config(TrainingConfig):
    models: int = 5
    # Table 2's "Our replication of (Krizhevsky et al., 2012)" row: Table 1's krizhevsky network, a cache hit
    # where table1 ran with the same recipe, else trained beside the ensemble's
    replication: bool = True
    jobs: int = 1  # networks trained at once, each in a process of its own (its log in its run folder)


@dg.asset(group_name="training", kinds={"pytorch", "parquet"}, code_version=TRAIN_CODE)
def table2(
    context: dg.AssetExecutionContext,
    config: Table2Config,
    settings: ZFSettings,
    zfnet_model: dict,
    imagenet_train_shards: dict,
    imagenet_val_shards: dict,
    pixel_mean_image: dict,
) -> dict:
    """Table 2: the single model, and an ensemble of ``models`` networks (seeds 0..N-1, probabilities
    averaged over 10 crops and over networks), and with ``replication`` Krizhevsky et al.'s layout (Table 1's
    network), beside the paper's numbers."""
    with settings.gpu_lock(context.log.info):
        shards, upstream = _training_inputs(imagenet_train_shards, imagenet_val_shards, pixel_mean_image)
        cfgs = [_table_run(settings, config, shards, config.arch, config.seed + i) for i in range(1, config.models)]
        if config.replication:
            cfgs.append(_table_run(settings, config, shards, "krizhevsky", config.seed))
        records = [zfnet_model] + train_all(context, settings, cfgs, upstream, config.launcher, config.jobs)
    replication = records.pop()["final"] if config.replication else None
    sizes = evaluate.ensemble_sizes([Path(r["path"]) / train.PREDICTIONS for r in records])
    table, md = tables.table2(
        _ten_crop_errors(records[0]["final"]),
        {"val_top1_err": sizes[-1]["top1_err"], "val_top5_err": sizes[-1]["top5_err"], "models": config.models},
        _ten_crop_errors(replication) if replication else None,
        [_ten_crop_errors(r["final"]) for r in records],
        sizes,
    )
    png = render.render_table2(sizes, settings.out / "table2" / "table2.png")
    context.add_output_metadata({"ensemble": image_md(png, title="what each added network takes off the error")})
    return {
        **publish_table(context, settings.out / "table2", "table2", table, md),
        "runs": [r["path"] for r in records],
        "ensemble_sizes": sizes,
        "png": str(png),
    }
