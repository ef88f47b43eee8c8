"""Transfer assets (paper section 5): Tables 4-7 and Fig. 7.

"We keep layers 1-7 of our ImageNet-trained model fixed and train a new softmax classifier on top";
Table 7 puts a linear SVM or softmax on single layers. Splits are seeded and saved as Parquet so any
number traces to its images; C is chosen by cross-validation inside each split's training images.
"Non-pretrained" rows train the same network from scratch on each split's training images.
"""

import functools
import os
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from assets.cache import cached_stage, code_version, fingerprint
from assets.features import layer_deps
from assets.metadata import image_md, publish_table
from assets.parallel import Trainings, at_once
from assets.resources import ZFSettings
from assets.training import TRAIN_CODE
from zf_pipeline import render, tables, transfer
from zf_pipeline.data import loader, readers
from zf_pipeline.io import atomic_path, write_table
from zf_pipeline.transfer import loading, probes, protocol, scratch, splits

TRANSFER_CODE = code_version(loading, probes, protocol, scratch, splits, tables)
TABLE7_PROBES = list(tables.PAPER_TABLE7)  # (classifier, layer): SVM on layers 1-5 and 7, softmax on 5 and 7


class ProbeSettings(dg.Config):
    """The linear classifiers: backend '' = the torch probe on a GPU, scikit-learn on the CPU.

    Empty / 0 fields take the defaults: the full C grid, tol 1e-5 and 1000 iterations; on the demo the grid
    1..1e5 (fc7's cross-validated accuracy still rises up to 1e4 on some splits), tol 1e-3 and up to 10000
    iterations, at which every one of its many fits converges (the SVM at C = 1e4 takes ~1,400 on conv5).
    A fit that does not converge is recorded in the runs table's ``converged`` column and named under the table."""

    backend: str = ""
    c_grid: list[float] = []
    tol: float = 0.0
    max_iter: int = 0
    cv_folds: int = 3
    splits: int = 5
    max_test: int = 50
    seed: int = 0


def probe_config(settings: ZFSettings, cfg: ProbeSettings, kind: str) -> probes.ProbeConfig:
    device = settings.torch_device()
    backend = cfg.backend or ("torch" if device.startswith("cuda") else "sklearn")
    demo = settings.demo
    return probes.ProbeConfig(
        kind=kind,
        backend=backend,
        cv_folds=cfg.cv_folds,
        seed=cfg.seed,
        device=device if backend == "torch" else "cpu",
        c_grid=tuple(cfg.c_grid) or ((1.0, 10.0, 100.0, 1e3, 1e4, 1e5) if demo else probes.DEFAULT_C_GRID),
        tol=cfg.tol or (1e-3 if demo else 1e-5),
        max_iter=cfg.max_iter or (10000 if demo else 1000),
        n_jobs=os.cpu_count() or 1,
    )


def pretrained_runs(
    context: dg.AssetExecutionContext, settings: ZFSettings, cfg: ProbeSettings, stage: str, features: dict,
    probe_list: list[tuple[str, str]], n_train: list[int],
) -> dict:
    """Probe runs of frozen features over seeded splits: runs.parquet (one row per split) + splits.parquet.
    Each probe's runs are kept as they finish (``parts/``), so a killed build resumes at the probe it was on."""

    def build(out: Path) -> dict:
        folder = Path(features["extraction"]) / "features"
        _, y, ids = loading.load_features(folder, probe_list[0][1])
        table = splits.protocol_splits(ids, y, n_train, max_test=cfg.max_test, n_splits=cfg.splits, seed=cfg.seed,
                                       short_classes="use_available")
        write_table(table, out / "splits")
        runs = []
        for layer in dict.fromkeys(layer for _, layer in probe_list):
            X = None  # loaded only for a probe still to run
            for kind in (k for k, on in probe_list if on == layer):
                part = out / "parts" / f"{kind}_{layer}.parquet"
                if part.exists():
                    context.log.info(f"{stage}: {kind} on {layer} kept from a build that was cut off")
                else:
                    if X is None:
                        X, y, ids = loading.load_features(folder, layer)
                    context.log.info(f"{stage}: {kind} on {layer}, {X.shape[1]} dims, {len(y)} images")
                    result = protocol.evaluate_splits(X, y, ids, table, probe_config(settings, cfg, kind), layer=layer)
                    part.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(part) as tmp:
                        pq.write_table(result, tmp)
                runs.append(pq.read_table(part))
        write_table(pa.concat_tables(runs), out / "runs")
        return {"runs": str(out / "runs.parquet"), "splits": str(out / "splits.parquet"), "classes": int(y.max()) + 1}

    key = [TRANSFER_CODE, cfg.model_dump(), probe_list, n_train, features["fingerprint"]]
    return cached_stage(settings.out, stage, key, build, context.log.info)


def _publish(
    context: dg.AssetExecutionContext, settings: ZFSettings, name: str, table: pa.Table, md: str, extra: dict
) -> dict:
    record = publish_table(context, settings.out / name, name, table, md)
    # A table is as new as the cached stages it summarizes: their fingerprints make its own.
    stages = {d: r["fingerprint"] for d, r in extra.get("stages", {}).items()}
    return {**record, "fingerprint": fingerprint(name, md, stages), **extra}


def _check_runs(record: dict, layers: list[str]) -> list[str]:
    split_table = pq.read_table(record["splits"])
    n_splits = len({index for _, index in splits.split_keys(split_table)})
    problems = transfer.run_problems(
        pq.read_table(record["runs"]), layers=layers, n_splits=n_splits, n_classes=record["classes"]
    )
    return problems + splits.split_problems(split_table)


def complete_check(asset: str, layers: list[str]) -> dg.AssetChecksDefinition:
    """A blocking check on a transfer table: every layer, split and class present, accuracies in [0, 100]."""

    @dg.asset_check(asset=asset, name=f"{asset}_complete", blocking=True)
    def _complete(settings: ZFSettings) -> dg.AssetCheckResult:
        problems = {d: _check_runs(r, layers) for d, r in settings.record(asset)["stages"].items()}
        return dg.AssetCheckResult(passed=not any(problems.values()),
                                   metadata={d: dg.MetadataValue.json(p[:20]) for d, p in problems.items()})

    _complete.__doc__ = f"Every layer, split and class of {asset} is present and every accuracy lies in [0, 100]."
    return _complete


# ----------------------------------------------------------------------------------------- Table 7


def table7_asset(datasets: list[str]) -> dg.AssetsDefinition:
    ins, deps = {}, []
    for dataset in datasets:
        loaded, more = layer_deps(dataset)
        ins[dataset] = loaded["conv1"]
        deps += more

    @dg.asset(name="table7", group_name="transfer", kinds={"scikitlearn", "parquet", "png"}, code_version=TRANSFER_CODE,
              ins=ins, deps=deps)
    def _table7(
        context: dg.AssetExecutionContext, config: ProbeSettings, settings: ZFSettings, **features: dict
    ) -> dict:
        """Table 7: a linear SVM on each of layers 1-5 and 7, and a softmax on layers 5 and 7, of the frozen
        network, on Caltech-101 (30 train/class) and Caltech-256 (60/class): mean per-class accuracy ± std
        over splits, beside the paper's numbers."""
        records = {d: pretrained_runs(context, settings, config, f"table7_{d}", features[d], TABLE7_PROBES,
                                      [tables.TABLE7_N_TRAIN[d]]) for d in datasets}
        names = {d: settings.dataset_name(d) for d in datasets}
        table, md = tables.table7({d: pq.read_table(r["runs"]) for d, r in records.items()}, names)
        png = render.render_table7(table, settings.out / "table7" / "table7.png")
        out = _publish(context, settings, "table7", table, md, {"png": str(png), "stages": records})
        context.add_output_metadata({"plot": image_md(png)})
        return out

    return _table7


# ----------------------------------------------------------------------------------------- Table 4 / 5


class CaltechConfig(ProbeSettings):
    n_train: list[int] = list(splits.TABLE4_N_TRAIN)
    non_pretrained_splits: int = 5  # splits on which the network is also trained from scratch (0: none)
    non_pretrained_epochs: int = 0  # 0: the zfnet_model recipe's epochs
    non_pretrained_jobs: int = 1  # from-scratch networks trained at once, each in a process of its own


def non_pretrained_runs(
    context: dg.AssetExecutionContext, settings: ZFSettings, cfg: CaltechConfig, dataset: str, root: str,
    split_file: str, model: dict,
) -> list[dict]:
    """The paper's "non-pretrained" rows: the same network trained from scratch on each of the first
    ``non_pretrained_splits`` splits (cached by content per split), ``non_pretrained_jobs`` at once."""
    images = readers.open_imageset(dataset, root)
    table = pq.read_table(split_file)
    size = loader.open_split(Path(model["config"]["shards"])).size
    recipe = scratch.recipe_from_dict(model["config"])

    def one_split(n_train: int, index: int, trainings: Trainings | None) -> dict:
        chosen = splits.one_split(table, n_train, index).to_pydict()
        roles = dict(zip(chosen["image_id"], chosen["role"]))

        def build(out: Path) -> dict:
            return {"row": scratch.non_pretrained_run(images, roles, out, size=size, recipe=recipe,
                                                      epochs=cfg.non_pretrained_epochs, n_train=n_train,
                                                      split_index=index,
                                                      launch=trainings.train if trainings else None)}

        key = [TRAIN_CODE, TRANSFER_CODE, model["fingerprint"], dataset, n_train, index, cfg.seed,
               cfg.non_pretrained_epochs]
        log = trainings.log if trainings else context.log.info
        return cached_stage(settings.out, f"scratch_{dataset}", key, build, log)["row"]

    wanted = [(n_train, index) for n_train, index in splits.split_keys(table) if index < cfg.non_pretrained_splits]
    if cfg.non_pretrained_jobs <= 1:
        return [one_split(n_train, index, None) for n_train, index in wanted]
    return at_once(context, [functools.partial(one_split, n, i) for n, i in wanted], cfg.non_pretrained_jobs)


def caltech_table(context, settings: ZFSettings, cfg: CaltechConfig, name: str, dataset: str, features: dict,
                  source_images: dict, model: dict, builder) -> dict:
    with settings.gpu_lock(context.log.info):  # the probes and the from-scratch networks train on the device
        record = pretrained_runs(
            context, settings, cfg, f"{name}_{dataset}", features, [("softmax", "fc7")], cfg.n_train
        )
        runs = pq.read_table(record["runs"])
        if cfg.non_pretrained_splits:
            scratch = non_pretrained_runs(
                context, settings, cfg, dataset, source_images["roots"][dataset], record["splits"], model
            )
            runs = pa.concat_tables([runs, pa.Table.from_pylist(scratch, schema=protocol.RUN_SCHEMA)])
    table, md = builder(runs)
    return _publish(context, settings, name, table, md, {"stages": {dataset: record}, "runs_table": runs.num_rows})


@dg.asset(group_name="transfer", kinds={"scikitlearn", "pytorch", "parquet"}, code_version=TRANSFER_CODE,
          ins={"features": layer_deps("caltech101")[0]["conv1"], "model": dg.AssetIn("zfnet_model")},
          deps=layer_deps("caltech101")[1])
def table4(context: dg.AssetExecutionContext, config: CaltechConfig, settings: ZFSettings, source_images: dict,
           features: dict, model: dict) -> dict:
    """Table 4: Caltech-101, 15 or 30 training images per class, up to 50 test, 5 random splits; a softmax on the
    frozen layer-7 features ("ImageNet-pretrained") against the network trained from scratch ("non-pretrained")."""
    return caltech_table(
        context, settings, config, "table4", "caltech101", features, source_images, model, tables.table4
    )


def caltech256_assets() -> list:
    ins = {"features": layer_deps("caltech256")[0]["conv1"], "model": dg.AssetIn("zfnet_model")}

    class Table5Config(CaltechConfig):
        n_train: list[int] = list(splits.TABLE5_N_TRAIN)

    @dg.asset(group_name="transfer", kinds={"scikitlearn", "pytorch", "parquet"}, code_version=TRANSFER_CODE,
              ins=ins, deps=layer_deps("caltech256")[1])
    def table5(context: dg.AssetExecutionContext, config: Table5Config, settings: ZFSettings, source_images: dict,
               features: dict, model: dict) -> dict:
        """Table 5: Caltech-256 with 15, 30, 45, 60 training images per class, pretrained vs non-pretrained."""
        return caltech_table(
            context, settings, config, "table5", "caltech256", features, source_images, model, tables.table5
        )

    class Fig7Config(ProbeSettings):
        n_train: list[int] = list(splits.FIG7_N_TRAIN)

    @dg.asset(group_name="transfer", kinds={"scikitlearn", "parquet", "png"}, code_version=TRANSFER_CODE,
              ins={"features": ins["features"]}, deps=layer_deps("caltech256")[1])
    def fig7(context: dg.AssetExecutionContext, config: Fig7Config, settings: ZFSettings, features: dict) -> dict:
        """Fig. 7: Caltech-256 accuracy against the number of training images per class (1..60)."""
        record = pretrained_runs(context, settings, config, "fig7", features, [("softmax", "fc7")], config.n_train)
        table, md = tables.fig7(pq.read_table(record["runs"]))
        png = render.render_fig7(table, settings.out / "fig7" / "fig7.png")
        out = _publish(context, settings, "fig7", table, md, {"png": str(png), "stages": {"caltech256": record}})
        context.add_output_metadata({"plot": image_md(png)})
        return out

    return [table5, fig7]


# ----------------------------------------------------------------------------------------- Table 6


def voc_assets() -> list:
    @dg.asset(
        group_name="transfer",
        kinds={"scikitlearn", "parquet"},
        code_version=TRANSFER_CODE,
        ins={
            "train_features": layer_deps("voc2012_train")[0]["conv1"],
            "val_features": layer_deps("voc2012_val")[0]["conv1"],
        },
        deps=layer_deps("voc2012_train")[1] + layer_deps("voc2012_val")[1],
    )
    def table6(context: dg.AssetExecutionContext, config: ProbeSettings, settings: ZFSettings, source_images: dict,
               train_features: dict, val_features: dict) -> dict:
        """Table 6: a 20-way softmax on frozen layer-7 features, trained on PASCAL VOC 2012 train, average
        precision per class on val (the paper's test-server numbers cannot be reproduced offline)."""
        root = source_images["roots"]["voc2012"]

        def labelled(features: dict, split: str):
            X, _, ids = loading.load_features(Path(features["extraction"]) / "features", "fc7")
            records = {r.image_id: r for r in readers.open_imageset("voc2012", root, split).records}
            return X, [records[i].labels for i in ids], [records[i].difficult for i in ids]

        def build(out: Path) -> dict:
            X_train, labels_train, _ = labelled(train_features, "train")
            X_val, labels_val, difficult = labelled(val_features, "val")
            voc = protocol.evaluate_voc(
                X_train,
                labels_train,
                X_val,
                labels_val,
                probe_config(settings, config, "softmax"),
                difficult_val=difficult,
            )
            write_table(voc, out / "voc")
            return {"voc": str(out / "voc.parquet")}

        key = [TRANSFER_CODE, config.model_dump(), train_features["fingerprint"], val_features["fingerprint"]]
        record = cached_stage(settings.out, "table6_voc2012", key, build, context.log.info)
        table, md = tables.table6(pq.read_table(record["voc"]))
        return _publish(context, settings, "table6", table, md, {"stages": {"voc2012": record}})

    return [table6]


def transfer_assets(settings: ZFSettings) -> list:
    datasets = ["caltech101"] + (["caltech256"] if settings.caltech256_root else [])
    defs = [table7_asset(datasets), complete_check("table7", sorted({layer for _, layer in TABLE7_PROBES})), table4,
            complete_check("table4", ["fc7"])]
    if settings.caltech256_root:
        defs += caltech256_assets() + [complete_check("table5", ["fc7"]), complete_check("fig7", ["fc7"])]
    if settings.voc2012_root:
        defs += voc_assets()
    return defs

