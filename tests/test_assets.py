"""The Dagster layer: definitions load, a small demo chain materializes, and a re-run is a cache hit."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

import assets
from assets.cache import cached_stage, fingerprint
from assets.data import pixel_mean_image, source_images
from assets.resources import JsonIOManager, ZFSettings
from assets.training import zfnet_model
from zf_pipeline.evaluate import ensemble_errors
from zf_pipeline.train import PREDICTIONS

TINY_DEMO = {"train_per_class": 6, "val_per_class": 5, "target_per_class": 4}


def test_definitions_load_with_groups_and_checks():
    graph = assets.defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"source_images", "imagenet_train_shards", "pixel_mean_image", "zfnet_model", "top9", "fig8"} <= keys
    assert "features/caltech101/conv5" in keys
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {"data", "training", "features", "visualization"} <= groups
    checks = {k.name for k in graph.asset_check_keys}
    assert {"table4_complete", "table7_complete", "top9_complete", "zfnet_model_learned"} <= checks


def test_compile_is_on_by_default_on_a_gpu_only():
    """Unset, the training and extraction assets compile on a GPU (where it pays) and not on the CPU; a
    value set in the run config wins either way, and the configs accept all three."""
    for device, default in (("cpu", False), ("cuda", True), ("cuda:1", True)):
        settings = ZFSettings(device=device)
        assert settings.use_compile(None) is default
        assert (settings.use_compile(True), settings.use_compile(False)) == (True, False)
    for config in (assets.training.TrainingConfig, assets.features.ExtractionConfig):
        assert (
            config().compile is None and config(compile=True).compile is True and config(compile=False).compile is False
        )


def test_the_target_is_named_as_the_user_names_it(monkeypatch):
    """The paper's name only for data given as the paper's dataset; the demo's and a user's own are theirs."""
    for var in ("ZF_IMAGENET_ROOT", "ZF_CALTECH101_ROOT", "ZF_CALTECH101_NAME", "ZF_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    assert ZFSettings.from_env().dataset_name("caltech101") == "demo_target"
    monkeypatch.setenv("ZF_CALTECH101_ROOT", "/data/caltech101")
    assert ZFSettings.from_env().dataset_name("caltech101") == "caltech101"
    monkeypatch.setenv("ZF_CALTECH101_NAME", "birds")
    assert ZFSettings.from_env().dataset_name("caltech101") == "birds"


def test_cached_stage_hits_on_same_key_and_rebuilds_on_a_new_one(tmp_path):
    calls = []

    def build(out: Path) -> dict:
        calls.append(out)
        (out / "x.txt").write_text("done")
        return {"n": len(calls)}

    first = cached_stage(tmp_path, "stage", ["v1", {"a": 1}], build, log=lambda _: None)
    again = cached_stage(tmp_path, "stage", ["v1", {"a": 1}], build, log=lambda _: None)
    other = cached_stage(tmp_path, "stage", ["v1", {"a": 2}], build, log=lambda _: None)
    assert (first["cached"], again["cached"], other["cached"]) == (False, True, False)
    assert first["path"] == again["path"] != other["path"]
    assert len(calls) == 2 and fingerprint("x", {"b": 1, "a": 2}) == fingerprint("x", {"a": 2, "b": 1})


def test_a_failed_build_leaves_no_completion_marker(tmp_path):
    def build(out: Path) -> dict:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached_stage(tmp_path, "stage", ["k"], build, log=lambda _: None)
    assert not list(tmp_path.glob("stage/*/_asset.json"))


@pytest.mark.slow
def test_demo_chain_materializes_and_second_run_is_a_cache_hit(tmp_path):
    settings = ZFSettings(output_root=str(tmp_path / "outputs"))
    resources = {"settings": settings, "io_manager": JsonIOManager(base_dir=str(settings.out / "_records"))}
    shard_defs = [d for d in assets.data.shard_asset("imagenet_train_shards", "imagenet", "train", "train")]
    selection = [source_images, shard_defs[0], pixel_mean_image]
    config = dg.RunConfig({"source_images": {"config": TINY_DEMO}, "imagenet_train_shards": {"config": {"workers": 1}}})

    first = dg.materialize(selection, resources=resources, run_config=config)
    assert first.success
    record = json.loads((settings.out / "_records" / "imagenet_train_shards.json").read_text())
    assert record["images_written"] == 10 * TINY_DEMO["train_per_class"] and not record["cached"]
    mean = json.loads((settings.out / "_records" / "pixel_mean_image.json").read_text())
    assert mean["shape"] == [128, 128, 3]

    second = dg.materialize(selection, resources=resources, run_config=config)
    assert second.success
    again = json.loads((settings.out / "_records" / "imagenet_train_shards.json").read_text())
    assert again["cached"] and again["path"] == record["path"]


@pytest.mark.slow
def test_training_through_dagster_pipes_subprocess(tmp_path):
    """``launcher: pipes`` trains in a subprocess (python -m assets.pipes_train) and the asset reads its run folder."""
    settings = ZFSettings(output_root=str(tmp_path / "outputs"), device="cpu")
    resources = {"settings": settings, "io_manager": JsonIOManager(base_dir=str(settings.out / "_records"))}
    train_shards = assets.data.shard_asset("imagenet_train_shards", "imagenet", "train", "train")[0]
    val_shards = assets.data.shard_asset("imagenet_val_shards", "imagenet", "val", "val")[0]
    selection = [source_images, train_shards, val_shards, pixel_mean_image, zfnet_model]
    config = dg.RunConfig({
        "source_images": {"config": TINY_DEMO},
        "zfnet_model": {"config": {"launcher": "pipes", "epochs": 1, "width": 0.125, "batch_size": 16}},
    })
    assert dg.materialize(selection, resources=resources, run_config=config).success
    record = settings.record("zfnet_model")
    assert Path(record["checkpoint"]).is_file() and record["final"]["epochs"] == 1
    assert record["final"]["val_center_n"] == 10 * TINY_DEMO["val_per_class"]


@pytest.mark.slow
def test_table2_fills_the_replication_row_with_table1s_krizhevsky_network(tmp_path):
    """Table 2's "Our replication of Krizhevsky" row is Table 1's krizhevsky network: trained once, shared through
    the run cache, its 10-crop errors in both tables; the ensemble's row counts its networks and averages their
    saved probabilities. Table 1 with 2 seeds shares "ours" seed 1 with the ensemble and averages each row."""
    settings = ZFSettings(output_root=str(tmp_path / "outputs"), device="cpu")
    resources = {"settings": settings, "io_manager": JsonIOManager(base_dir=str(settings.out / "_records"))}
    train_shards = assets.data.shard_asset("imagenet_train_shards", "imagenet", "train", "train")[0]
    val_shards = assets.data.shard_asset("imagenet_val_shards", "imagenet", "val", "val")[0]
    recipe = {"epochs": 1, "width": 0.125, "batch_size": 16}
    config = dg.RunConfig({
        "source_images": {"config": TINY_DEMO},
        "zfnet_model": {"config": recipe},
        "table1": {"config": {**recipe, "archs": ["krizhevsky", "ours"], "seeds": 2}},
        "table2": {"config": {**recipe, "models": 2}},
    })
    selection = [source_images, train_shards, val_shards, pixel_mean_image, zfnet_model, assets.training.table1,
                 assets.training.table2]
    assert dg.materialize(selection, resources=resources, run_config=config).success

    results = [json.loads(p.read_text()) | {"dir": p.parent} for p in (settings.out / "train").glob("*/result.json")]
    assert sorted((r["arch"], r["seed"]) for r in results) == [("krizhevsky", 0), ("krizhevsky", 1), ("ours", 0),
                                                               ("ours", 1)]  # each trained once
    t1 = {r["arch"]: r for r in pq.read_table(settings.record("table1")["path"]).to_pylist()}
    t2 = {r["model"]: r for r in pq.read_table(settings.record("table2")["path"]).to_pylist()}
    kriz = sorted((r for r in results if r["arch"] == "krizhevsky"), key=lambda r: r["seed"])
    assert t1["krizhevsky"]["seeds"] == 2 and t1["krizhevsky"]["val_top1_err"] == pytest.approx(
        (kriz[0]["val_10crop_top1_err"] + kriz[1]["val_10crop_top1_err"]) / 2)
    replication = t2["Our replication of (Krizhevsky et al., 2012), 1 convnet"]
    assert replication["val_top1_err"] == kriz[0]["val_10crop_top1_err"]  # seed 0, Table 1's first
    assert t2["5 convnets as per Fig. 2"]["models"] == 2
    ours = [r["dir"] / PREDICTIONS for r in results if r["arch"] == "ours"]
    assert t2["5 convnets as per Fig. 2"]["val_top1_err"] == pytest.approx(ensemble_errors(ours)["top1_err"])
    sizes = settings.record("table2")["ensemble_sizes"]
    assert Path(settings.record("table2")["png"]).stat().st_size > 0
    assert [s["models"] for s in sizes] == [1, 2] and sizes[-1]["top1_err"] == pytest.approx(
        t2["5 convnets as per Fig. 2"]["val_top1_err"])
    # Fig. 3's epoch snapshots: zfnet_model's network alone keeps them, not the tables' others
    snapshots = {p.parent for p in (settings.out / "train").glob("*/epoch_*.pt")}
    assert snapshots == {Path(settings.record("zfnet_model")["path"])}


def test_training_config_defaults_follow_the_data_and_explicit_values_win():
    from assets.training import TrainingConfig, train_config

    def cfg(settings: ZFSettings, **kw):
        return train_config(settings, TrainingConfig(**kw), "t", "v", "m.npy")

    demo, real = ZFSettings(device="cpu"), ZFSettings(device="cpu", imagenet_root="/data/imagenet")
    d = cfg(demo)
    got = (d.init, d.conv1_init_std, d.input_scale, d.warmup_epochs, d.filter_radius, d.weight_decay, d.epochs)
    assert got == ("kaiming", 1e-2, 1 / 16, 1, None, 5e-2, 8)
    r = cfg(real)
    assert (r.init, r.conv1_init_std, r.input_scale, r.warmup_epochs, r.filter_radius) == ("normal", None, 1.0, 5, None)
    assert cfg(real, init="kaiming").input_scale == 1 / 64
    assert cfg(real, filter_radius=0.1, min_lr=1e-4, max_lr_drops=3).filter_radius == 0.1
    assert (cfg(real, max_lr_drops=3).max_lr_drops, r.max_lr_drops) == (3, None)
    off = cfg(demo, conv1_init_std=0.0, warmup_epochs=0, input_scale=0.5)
    assert (off.conv1_init_std, off.warmup_epochs, off.input_scale) == (None, 0, 0.5)
