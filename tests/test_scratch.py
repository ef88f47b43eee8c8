"""The paper's "non-pretrained" rows (Tables 4-5): a network trained from scratch on one split's images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_features import small_model
from zf_pipeline.analysis.inputs import ValImages
from zf_pipeline.data.pixel_mean import compute_pixel_mean, save_pixel_mean
from zf_pipeline.data.records import ImageRecord, ImageSet
from zf_pipeline.data.shards import write_shards
from zf_pipeline.models.checkpoint import save_checkpoint
from zf_pipeline.train import TrainConfig
from zf_pipeline.transfer.scratch import non_pretrained_run, recipe_from_dict

CLASSES = ["red", "green", "blue"]


def colour_images(root: Path, per_class: int) -> ImageSet:
    """Noisy 80 px JPEGs whose class is the dominant colour channel: learnable in a few CPU steps."""
    rng = np.random.default_rng(0)
    records = []
    for label, name in enumerate(CLASSES):
        for n in range(per_class):
            pixels = rng.integers(0, 120, (80, 80, 3))
            pixels[..., label] += 120
            path = root / name / f"{n:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
            records.append(ImageRecord(f"{name}/{n:03d}", str(path), label, name))
    return ImageSet("colours", root, "all", CLASSES, CLASSES, records)


def recipe(**over) -> TrainConfig:
    base = dict(shards="", val_shards="", mean="", out="", arch="krizhevsky", width=0.125, epochs=10, batch_size=8,
                lr=0.01, init="kaiming", crop=64, input_scale=1 / 64, workers=0, device="cpu", deterministic=True,
                log_every=0)
    return TrainConfig(**{**base, **over})


@pytest.mark.slow
@pytest.mark.parametrize("lr,learns", [(0.01, True), (0.0, False)])
def test_a_network_trained_from_scratch_on_a_split_is_scored_on_its_test_images(tmp_path, caplog, lr, learns):
    images = colour_images(tmp_path / "images", per_class=12)
    roles = {r.image_id: "train" if int(r.image_id[-3:]) < 8 else "test" for r in images.records}
    with caplog.at_level(logging.WARNING, logger="zf_pipeline"):
        row = non_pretrained_run(images, roles, tmp_path / "run", size=72, recipe=recipe(lr=lr), epochs=0, n_train=8,
                                 split_index=0)
    assert (row["method"], row["layer"], row["n_train_images"], row["n_test_images"]) == (
        "non-pretrained",
        "fc8",
        24,
        12,
    )
    assert row["converged"] is learns
    # A net that never left chance is said so in the log, and its row is flagged for the table's note.
    assert ("train error stayed at" in caplog.text) is not learns
    if learns:
        assert row["accuracy"] > 100 / 3


def test_the_test_images_never_steer_the_schedule(tmp_path, monkeypatch):
    """The split's test images are the run's val shards (its per-epoch log), so the plateau schedule, and with it a
    max_lr_drops stop, watches the training loss: the test images only score the final net."""
    import zf_pipeline.transfer.scratch as scratch

    images = colour_images(tmp_path / "images", per_class=4)
    roles = {r.image_id: "train" if int(r.image_id[-3:]) < 2 else "test" for r in images.records}
    given = []

    def stop_at_training(cfg: TrainConfig):
        given.append(cfg)
        raise InterruptedError

    monkeypatch.setattr(scratch.train, "train", stop_at_training)
    with pytest.raises(InterruptedError):
        non_pretrained_run(images, roles, tmp_path / "run", size=72, recipe=recipe(max_lr_drops=2), epochs=0,
                           n_train=2, split_index=0)
    assert given[0].plateau_on == "train" and given[0].val_shards == str(tmp_path / "run" / "test")


@pytest.mark.slow
def test_from_scratch_splits_train_at_once_each_in_a_process_of_its_own(tmp_path):
    from assets.parallel import at_once

    images = colour_images(tmp_path / "images", per_class=12)
    split_roles = [{r.image_id: "train" if (int(r.image_id[-3:]) + k) % 12 < 8 else "test" for r in images.records}
                   for k in (0, 4)]
    logged = []
    context = type("Context", (), {"log": type("Log", (), {"info": staticmethod(logged.append)})})()

    def task(k):
        return lambda trainings: non_pretrained_run(images, split_roles[k], tmp_path / f"split{k}", size=72,
                                                    recipe=recipe(), epochs=0, n_train=8, split_index=k,
                                                    launch=trainings.train)

    rows = at_once(context, [task(0), task(1)], jobs=2)
    assert [r["split_index"] for r in rows] == [0, 1] and all(r["converged"] for r in rows)
    assert all((tmp_path / f"split{k}" / "run" / "train.log").exists() for k in (0, 1))
    assert sum(" in pid " in m for m in logged) == 2
    here = non_pretrained_run(images, split_roles[0], tmp_path / "here", size=72, recipe=recipe(), epochs=0,
                              n_train=8, split_index=0)
    assert here["accuracy"] == rows[0]["accuracy"]  # a deterministic recipe: the same net either way


@pytest.mark.slow
def test_table4s_from_scratch_rows_are_the_same_trained_one_by_one_or_at_once(tmp_path):
    """The asset's path: the splits of a split table, cached per split, ``non_pretrained_jobs`` at once."""
    from assets import transfer
    from assets.resources import ZFSettings
    from zf_pipeline.data import readers
    from zf_pipeline.io import write_table
    from zf_pipeline.transfer import splits

    colour_images(tmp_path / "caltech" / "101_ObjectCategories", per_class=12)
    caltech = readers.open_imageset("caltech101", tmp_path / "caltech")
    table = splits.protocol_splits([r.image_id for r in caltech.records], np.array([r.label for r in caltech.records]),
                                   [8], max_test=4, n_splits=2, seed=0)
    write_table(table, tmp_path / "splits")
    write_shards(caltech, tmp_path / "source", size=72, progress=False)  # the source model's shard size
    model = {"config": recipe(shards=str(tmp_path / "source")).to_dict(), "fingerprint": "model"}
    context = type("Context", (), {"log": type("Log", (), {"info": staticmethod(lambda m: None)})})()
    rows = {}
    for jobs in (1, 2):
        settings = ZFSettings(output_root=str(tmp_path / f"out{jobs}"), device="cpu")
        cfg = transfer.CaltechConfig(non_pretrained_splits=2, non_pretrained_jobs=jobs)
        rows[jobs] = transfer.non_pretrained_runs(context, settings, cfg, "caltech101", str(tmp_path / "caltech"),
                                                  str(tmp_path / "splits.parquet"), model)
    assert [r["split_index"] for r in rows[2]] == [0, 1] and all(r["converged"] for r in rows[2])
    assert [r["accuracy"] for r in rows[1]] == [r["accuracy"] for r in rows[2]]
    assert len(list((tmp_path / "out2").rglob("train.log"))) == 2 and not list((tmp_path / "out1").rglob("train.log"))


def test_the_stored_recipe_round_trips():
    stored = recipe(keep_epochs=(1, 2)).to_dict()
    assert recipe_from_dict({**stored, "keep_epochs": list(stored["keep_epochs"])}) == recipe(keep_epochs=(1, 2))


def test_val_images_see_an_image_file_as_they_see_its_shard(tmp_path):
    """A parts-config image given as a file goes through the same resize, crop and mean as the shards."""
    images = colour_images(tmp_path / "images", per_class=2)
    write_shards(images, tmp_path / "val", size=72, quality=100, progress=False)
    save_pixel_mean(tmp_path / "mean.npy", compute_pixel_mean(tmp_path / "val"))
    model = small_model()
    save_checkpoint(tmp_path / "last.pt", model, model.config, epoch=1)
    vis = ValImages(tmp_path / "last.pt", 64, 1 / 64, tmp_path / "val", tmp_path / "mean.npy", "cpu")
    record = images.records[3]
    from_shard = vis.lookup({record.image_id})[record.image_id]
    assert from_shard.shape == (3, 64, 64)
    # The shard's JPEG re-encoding (chroma subsampled) is the only difference: a few levels on noise, where a
    # crop one pixel off differs by tens.
    assert (vis.from_file(record.source) - from_shard).abs().mean() < 6 / 64
    other = vis.from_file(images.records[0].source)  # another class: another dominant colour
    assert (other - from_shard).abs().mean() > 20 / 64
