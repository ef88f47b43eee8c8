"""Loader (shards -> batches), augmentation, evaluation (10 crops, top-k, ensembles), training, resume, DDP."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from shard_writer import write_mean, write_split
from torch import nn

from zf_pipeline.data.loader import DecodedCache, ShardFormatError, augment, load_mean, open_split
from zf_pipeline.evaluate import ensemble_errors, ensemble_sizes, eval_crops, save_predictions, topk_errors
from zf_pipeline.models.checkpoint import load_checkpoint
from zf_pipeline.models.zfnet import filter_renormalizer, kaiming_init, renormalize_filters
from zf_pipeline.tables import TABLE1_LABELS, TABLE1_ORDERINGS, orderings, table1, table2
from zf_pipeline.train import PREDICTIONS, TrainConfig, disk_needed, make_step, parse_args, train

SIZE, CROP = 72, 64  # the smallest input ZFNet's stride-4 conv1 and three poolings accept is 63 px
CLASSES = ["red", "green", "blue"]


def _images(n: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Noisy images whose class is the dominant color channel: learnable in a few CPU steps."""
    rng = np.random.default_rng(seed)
    labels = [i % 3 for i in range(n)]
    images = []
    for label in labels:
        a = rng.integers(0, 120, (SIZE, SIZE, 3))
        a[..., label] += 120
        images.append(a.astype(np.uint8))
    return images, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for split, n, seed in (("train", 48, 0), ("val", 18, 1)):
        write_split(*_images(n, seed), root / split, split, CLASSES, size=SIZE, per_shard=8)
    write_mean(root / "train", root / "pixel_mean.npy")
    return root


def _config(data, out, **kw) -> TrainConfig:
    base = dict(shards=str(data / "train"), val_shards=str(data / "val"), mean=str(data / "pixel_mean.npy"),
                out=str(out), arch="krizhevsky", width=0.125, epochs=3, batch_size=8, lr=0.01, init="kaiming",
                crop=CROP, input_scale=1 / 64, workers=0, device="cpu", deterministic=True, log_every=0,
                keep_epochs=(1, 2))
    base.update(kw)
    return TrainConfig(**base)


# ---- loader (more in test_stream.py)


def test_incomplete_folder_and_bad_mean_fail_clearly(tmp_path, data):
    with pytest.raises(ShardFormatError, match="summary.json"):
        open_split(tmp_path)
    np.save(tmp_path / "m.npy", np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ShardFormatError, match=r"m.npy.*\(72, 72, 3\)"):
        load_mean(tmp_path / "m.npy", SIZE)


def test_split_smaller_than_a_batch_fails_clearly(data, tmp_path):
    with pytest.raises(ValueError, match=r"train: 48 training images make no full batch of 64"):
        train(_config(data, tmp_path, batch_size=64))


def test_augment_takes_one_crop_of_image_minus_mean_maybe_flipped():
    images = torch.randint(0, 255, (6, 3, 10, 10), dtype=torch.uint8)
    mean = torch.rand(3, 10, 10) * 255
    out = augment(images, mean, 7, torch.Generator().manual_seed(0))
    full = images.float() - mean
    flips = 0
    for i in range(6):
        views = [(full[i, :, y : y + 7, x : x + 7], f) for y in range(4) for x in range(4) for f in (0, 1)]
        match = [f for v, f in views if torch.allclose(out[i], v.flip(-1) if f else v)]
        assert len(match) >= 1
        flips += match[0]
    assert 0 < flips < 6  # both flipped and unflipped crops occur


# ---- evaluation


def test_topk_errors_on_known_logits():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [2, 1, 0, 0, 0, 0]])
    errs = topk_errors(logits, torch.tensor([0, 0, 1]))  # right; last place; second place
    assert errs["top1_err"] == pytest.approx(200 / 3) and errs["top5_err"] == pytest.approx(100 / 3)


class _Probe(nn.Module):
    """Logits read off the crop: class 0 when the top-left pixel is bright, 1 when the top-right is."""

    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, -1]], 1) * 10


def test_ten_crop_averages_corners_center_and_flips():
    # One bright pixel at the image's top-left corner: only the top-left crop and its flip see it,
    # one at its own top-left (class 0 logit) and one at its top-right (class 1): 2 of the 10 crops.
    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    images[0, 0, 0, 0] = 1
    mean = torch.zeros(3, 8, 8)
    crops = eval_crops(images, mean, 6, "ten")
    assert len(crops) == 10 and sum(int(c[0, 0, 0, 0] == 1) for c in crops) == 1
    from zf_pipeline.evaluate import predict

    probs, _ = predict(_Probe(), [(images, torch.tensor([0]))], mean, 6, "ten")
    p0 = torch.tensor([10.0, 0]).softmax(0)
    expected = (p0 + p0.flip(0) + 8 * torch.tensor([0.5, 0.5])) / 10
    assert torch.allclose(probs[0], expected)
    center, _ = predict(_Probe(), [(images, torch.tensor([0]))], mean, 6, "center")
    assert torch.allclose(center[0], torch.tensor([0.5, 0.5]))


def test_ensemble_averages_the_members_saved_probabilities(tmp_path):
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6]])
    bad = 1 - good  # wrong on every image, but less sure than good twice over
    members = (("a", good), ("b", good), ("c", bad))
    paths = [save_predictions(tmp_path / f"{name}.npz", p, labels) for name, p in members]
    assert topk_errors(bad, labels, (1,))["top1_err"] == 100
    ens = ensemble_errors(paths)
    assert ens["top1_err"] == 0 and (ens["models"], ens["n"]) == (3, 4)
    assert ensemble_errors(paths[2:])["top1_err"] == 100


def test_ensemble_sizes_average_every_k_subset_of_the_members(tmp_path):
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6]])
    paths = [save_predictions(tmp_path / f"{name}.npz", p, labels) for name, p in (("a", good), ("b", 1 - good))]
    one, two = ensemble_sizes(paths)
    # one network: right (0%) or wrong (100%) by the member; the two averaged are 0.5 everywhere, ties to class 0
    assert (one["models"], one["subsets"], one["top1_err"]) == (1, 2, 50.0)
    assert (one["top1_err_min"], one["top1_err_max"]) == (0.0, 100.0)
    assert (two["subsets"], two["top1_err"]) == (1, ensemble_errors(paths)["top1_err"])
    many = [save_predictions(tmp_path / f"m{i}.npz", good, labels) for i in range(7)]
    assert [s["subsets"] for s in ensemble_sizes(many, max_subsets=5)] == [5, 5, 5, 5, 5, 5, 1]


def test_ensemble_refuses_members_tested_on_other_images_and_foreign_files(tmp_path):
    probs = torch.full((4, 2), 0.5)
    a = save_predictions(tmp_path / "a.npz", probs, torch.tensor([0, 0, 1, 1]))
    b = save_predictions(tmp_path / "b.npz", probs, torch.tensor([0, 1, 0, 1]))
    c = save_predictions(tmp_path / "c.npz", probs, torch.tensor([0, 0, 1, 1]), ranks=2)
    for other in (b, c):
        with pytest.raises(ValueError, match=f"{other}: its images differ from {a}"):
            ensemble_errors([a, other])
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="x.npz: not a predictions file"):
        ensemble_errors([tmp_path / "x.npz"])
    with pytest.raises(FileNotFoundError, match="missing.npz: no predictions file"):
        ensemble_errors([tmp_path / "missing.npz"])


# ---- training


def test_a_few_sgd_steps_lower_the_loss_on_a_fixed_batch(data):
    from zf_pipeline.models import build, variant

    model = build(variant("krizhevsky", num_classes=3, width=0.125, input_size=CROP), seed=0)
    kaiming_init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    split = open_split(data / "train")
    images, labels = next(iter(DecodedCache(split, 12, shuffle=False).epoch(0)))
    x = augment(images, load_mean(data / "pixel_mean.npy"), CROP, torch.Generator().manual_seed(0), 1 / 64)
    step = make_step(model, opt, amp=False)
    losses = [step(x, labels)[0].item() for _ in range(10)]
    assert losses[-1] < 0.5 * losses[0]


def test_training_writes_checkpoints_metrics_and_learns(data, tmp_path):
    result = train(_config(data, tmp_path, epochs=3))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"last.pt", "epoch_001.pt", "epoch_002.pt", "metrics.jsonl", "metrics.parquet", "result.json",
            "learning_curve.png"} <= names and "epoch_003.pt" not in names
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    final = json.loads((tmp_path / "result.json").read_text())
    assert final["val_10crop_top1_err"] < 40 and final["val_10crop_n"] == 18  # chance is 66.7%
    assert final == result.final
    state = load_checkpoint(tmp_path / "epoch_002.pt")
    assert state["epoch"] == 2 and state["train_config"]["arch"] == "krizhevsky"
    alone = ensemble_errors([tmp_path / PREDICTIONS])  # the 10-crop test's probabilities, kept for Table 2
    assert (alone["top1_err"], alone["top5_err"], alone["n"]) == pytest.approx(
        (final["val_10crop_top1_err"], final["val_10crop_top5_err"], 18))


def test_a_run_without_room_for_its_checkpoints_fails_before_training(data, tmp_path, monkeypatch):
    import shutil as shutil_module

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=10_000))
    with pytest.raises(OSError, match=rf"{tmp_path}: 0.0 GB free, but krizhevsky's checkpoints need about"):
        train(_config(data, tmp_path, epochs=1))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_checkpoint_cut_short_by_a_full_disk_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    from zf_pipeline.models import build, checkpoint, variant

    def short_write(state, f):
        Path(f).write_bytes(b"PK")  # what torch's zip writer reports when the disk fills mid-file
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 149184 vs 149072")

    monkeypatch.setattr(checkpoint.torch, "save", short_write)
    net = build(variant("krizhevsky", num_classes=3, width=0.0625, input_size=CROP))
    with pytest.raises(OSError, match=r"last.pt: the checkpoint could not be written, the disk .* is full"):
        checkpoint.save_checkpoint(tmp_path / "last.pt", net, net.config, epoch=1)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(checkpoint.torch, "save", lambda state, f: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other failures pass through unchanged
        checkpoint.save_checkpoint(tmp_path / "last.pt", net, net.config, epoch=1)


def test_checkpoint_every_writes_on_its_epochs_the_kept_ones_and_the_last(data, tmp_path, monkeypatch):
    import zf_pipeline.train as train_module

    written = []
    real = train_module.save_checkpoint
    monkeypatch.setattr(
        train_module, "save_checkpoint", lambda *a, epoch, **kw: written.append(epoch) or real(*a, epoch=epoch, **kw)
    )
    fast = dict(width=0.0625, final_ten_crop=False, final_train_error=False)
    train(_config(data, tmp_path, epochs=5, checkpoint_every=3, keep_epochs=(1,), **fast))
    assert written == [1, 3, 5]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 5


def test_warmup_ramps_the_lr_linearly_per_step_then_holds_it(data, tmp_path, monkeypatch):
    import zf_pipeline.train as train_module

    lrs = []
    real = train_module.make_step

    def recording(model, opt, amp, after_update=None):
        step = real(model, opt, amp, after_update)
        return lambda x, y: lrs.append(opt.param_groups[0]["lr"]) or step(x, y)

    monkeypatch.setattr(train_module, "make_step", recording)
    fast = dict(width=0.0625, final_ten_crop=False, final_train_error=False, keep_epochs=())
    result = train(_config(data, tmp_path, epochs=3, warmup_epochs=2, **fast))
    steps = 48 // 8  # per epoch
    assert lrs == pytest.approx([0.01 * (s + 1) / (2 * steps) for s in range(2 * steps)] + [0.01] * steps)
    assert [m["lr"] for m in result.metrics] == pytest.approx([0.005, 0.01, 0.01])


def test_resumed_run_ends_bitwise_where_an_uninterrupted_run_ends(data, tmp_path):
    fast = dict(epochs=2, width=0.0625, final_ten_crop=False, final_train_error=False)
    whole = train(_config(data, tmp_path / "whole", **fast))
    cut = _config(data, tmp_path / "cut", **fast)
    first = train(TrainConfig(**{**cut.__dict__, "stop_after": 1}))  # as if killed after epoch 1
    assert len(first.metrics) == 1 and first.final == {}
    resumed = train(cut)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    same = ("epoch", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "lr", "lr_drops",
            "conv1_hf_median")
    assert [[m[k] for k in same] for m in whole.metrics] == [[m[k] for k in same] for m in resumed.metrics]


# ---- filter renormalization and the schedule's floor / stop


def _rms(w: torch.Tensor) -> torch.Tensor:
    return w.square().mean((1, 2, 3)).sqrt()


def test_renormalization_scales_filters_above_the_radius_to_it_and_leaves_the_others_bitwise():
    torch.manual_seed(0)
    w = torch.randn(8, 3, 5, 5) * torch.tensor([0.01, 0.5, 0.02, 2.0, 0.09, 0.3, 0.001, 1.0])[:, None, None, None]
    v = torch.randn(4, 8, 3, 3) * torch.tensor([0.05, 0.4, 0.1, 0.0])[:, None, None, None]
    v = v.contiguous(memory_format=torch.channels_last)  # the training step's layout
    before_w, before_v = w.clone(), v.clone()
    renormalize_filters([w, v], 0.1)
    for after, before in ((w, before_w), (v, before_v)):
        big = _rms(before) > 0.1
        assert big.any() and (~big).any()
        assert torch.equal(after[~big], before[~big])
        assert torch.allclose(_rms(after[big]), torch.full((int(big.sum()),), 0.1))
        cosine = F.cosine_similarity(after[big].flatten(1), before[big].flatten(1))
        assert torch.allclose(cosine, torch.ones_like(cosine))  # scaled, not turned


def test_after_a_renormalized_step_no_filter_exceeds_the_radius_and_the_rest_match_a_plain_step(data):
    from zf_pipeline.models import build, variant

    split = open_split(data / "train")
    images, labels = next(iter(DecodedCache(split, 12, shuffle=False).epoch(0)))
    x = augment(images, load_mean(data / "pixel_mean.npy"), CROP, torch.Generator().manual_seed(0), 1 / 64)
    nets = []
    for radius in (None, 0.05):
        net = build(variant("krizhevsky", num_classes=3, width=0.125, input_size=CROP), seed=0)
        kaiming_init(net)  # He init puts conv1's 11x11x3 filters at RMS ~0.074, above the radius
        torch.manual_seed(0)  # the same dropout masks in both steps
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        make_step(net, opt, False, filter_renormalizer(net, radius) if radius else None)(x, labels)
        nets.append(net)
    plain, renormed = nets
    convs = [n for n, m in renormed.named_modules() if isinstance(m, nn.Conv2d)]
    clipped = 0
    for name in convs:
        a, b = plain.get_submodule(name).weight, renormed.get_submodule(name).weight
        assert (_rms(b) <= 0.05 * (1 + 1e-6)).all()
        under = _rms(a) <= 0.05
        assert torch.equal(a[under], b[under])
        clipped += int((~under).sum())
    assert clipped > 0


def test_conv1_init_std_redraws_conv1_only():
    from zf_pipeline.models import build, variant
    from zf_pipeline.train import initialize

    nets = []
    for std in (None, 1e-2):
        net = build(variant("ours", num_classes=3, width=0.25, input_size=CROP), seed=0)
        initialize(net, TrainConfig("a", "b", "m", "o", init="kaiming", conv1_init_std=std))
        nets.append(dict(net.named_parameters()))
    he, mixed = nets
    assert mixed["conv1.weight"].std().item() == pytest.approx(1e-2, rel=0.1) and not mixed["conv1.bias"].any()
    assert he["conv1.weight"].std().item() > 0.06  # He: sqrt(2 / (3 * 11 * 11)) = 0.074
    assert all(torch.equal(he[k], mixed[k]) for k in he if not k.startswith("conv1."))


def _plateau(monkeypatch) -> None:
    """The validation error never improves: every epoch after the first is a plateau."""
    import zf_pipeline.train as train_module

    monkeypatch.setattr(train_module, "_errors", lambda *a, **kw: {"top1_err": 50.0, "top5_err": 10.0, "n": 18})


FAST = dict(width=0.0625, final_ten_crop=False, final_train_error=False, keep_epochs=())


def test_training_stops_when_the_lr_has_dropped_max_lr_drops_times(data, tmp_path, monkeypatch):
    _plateau(monkeypatch)
    result = train(_config(data, tmp_path, epochs=20, patience=1, max_lr_drops=2, **FAST))
    lrs = [m["lr"] for m in result.metrics]
    assert len(lrs) < 20 and result.final["epochs_run"] == len(lrs) and result.final["lr_drops"] == 2
    assert [m["lr_drops"] for m in result.metrics][-1] == 2 and len(set(lrs)) == 2  # 1e-2, then 1e-3: 2 drops
    assert json.loads((tmp_path / "result.json").read_text()) == result.final
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == len(lrs)
    again = train(_config(data, tmp_path, epochs=20, patience=1, max_lr_drops=2, **FAST))  # resumes an ended run
    assert len(again.metrics) == len(lrs) and again.final["epochs_run"] == len(lrs)


def test_a_run_stopped_early_keeps_its_last_epoch_for_fig3(data, tmp_path, monkeypatch):
    _plateau(monkeypatch)
    fast = {**FAST, "keep_epochs": (1, 2, 64)}
    result = train(_config(data, tmp_path, epochs=20, patience=1, max_lr_drops=2, **fast))
    n = result.final["epochs_run"]
    assert n < 20 and sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_001.pt", "epoch_002.pt",
                                                                               f"epoch_{n:03d}.pt"]


@pytest.mark.parametrize("plateau_on,column", [("val", "val_top1_err"), ("train", "train_loss")])
def test_the_plateau_schedule_watches_the_chosen_metric(data, tmp_path, monkeypatch, plateau_on, column):
    watched = []
    real_step = torch.optim.lr_scheduler.ReduceLROnPlateau.step

    def step(self, metric):
        watched.append(float(metric))
        real_step(self, metric)

    monkeypatch.setattr(torch.optim.lr_scheduler.ReduceLROnPlateau, "step", step)
    result = train(_config(data, tmp_path, epochs=3, warmup_epochs=1, plateau_on=plateau_on, **FAST))
    assert watched == pytest.approx([m[column] for m in result.metrics[1:]])  # none while ramping up


@pytest.mark.slow
def test_tables_1_and_2_train_their_networks_at_once_in_processes_of_their_own(data, tmp_path):
    from assets.resources import ZFSettings
    from assets.training import train_all

    logged = []
    context = type("Context", (), {"log": type("Log", (), {"info": staticmethod(logged.append)})})()
    settings = ZFSettings(output_root=str(tmp_path), device="cpu")
    cfgs = [_config(data, "", epochs=1, seed=seed, **FAST) for seed in (1, 2, 3)]
    records = train_all(context, settings, cfgs, ["upstream"], "inprocess", jobs=2)
    assert [r["config"]["seed"] for r in records] == [1, 2, 3]
    for r in records:
        assert "epoch 1/1" in (Path(r["path"]) / "train.log").read_text() and r["final"]["epochs_run"] == 1
    assert sum(" in pid " in m and "its log: " in m for m in logged) == 3  # each child's log is named
    again = train_all(context, settings, cfgs, ["upstream"], "inprocess", jobs=2)
    assert [r["fingerprint"] for r in again] == [r["fingerprint"] for r in records] and all(r["cached"] for r in again)

    bad = [_config(data, "", epochs=1, seed=4, **FAST), _config(data, "", epochs=1, init="nonsense", **FAST)]
    with pytest.raises(RuntimeError, match=r"training krizhevsky .* failed with exit code 1; its log: .*train\.log"):
        train_all(context, settings, bad, ["upstream"], "inprocess", jobs=2)
    assert train_all(context, settings, bad[:1], ["upstream"], "inprocess", jobs=2)[0]["cached"]  # it finished


def test_networks_trained_together_need_room_for_all_their_checkpoints_before_any_starts(data, tmp_path, monkeypatch):
    import shutil as shutil_module

    from assets.resources import ZFSettings
    from assets.training import train_all

    context = type("Context", (), {"log": type("Log", (), {"info": staticmethod(lambda m: None)})})()
    settings = ZFSettings(output_root=str(tmp_path), device="cpu")
    cfgs = [_config(data, "", epochs=1, seed=seed, **FAST) for seed in (1, 2)]
    one = disk_needed(cfgs[0], len(CLASSES))
    real = shutil_module.disk_usage
    free = {"bytes": int(1.5 * one)}  # room for one run's checkpoints, not two
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: real(path)._replace(free=free["bytes"]))
    with pytest.raises(OSError, match=rf"{tmp_path}: .* GB free, but 2 runs' checkpoints need about"):
        train_all(context, settings, cfgs, ["upstream"], "inprocess", jobs=2)
    assert not (tmp_path / "train").exists()  # nothing started
    free["bytes"] = 10**12
    train_all(context, settings, cfgs, ["upstream"], "inprocess", jobs=2)
    free["bytes"] = 0  # finished runs need no room: a cached re-run goes through on a full disk
    assert all(r["cached"] for r in train_all(context, settings, cfgs, ["upstream"], "inprocess", jobs=2))


def test_the_checkpoint_estimate_matches_what_a_run_writes(data, tmp_path):
    from zf_pipeline.models.checkpoint import checkpoint_bytes

    cfg = _config(data, tmp_path, epochs=3, **{**FAST, "keep_epochs": (1, 2, 64)})
    size = checkpoint_bytes(train(cfg).model)
    assert 0.95 < (tmp_path / "last.pt").stat().st_size / size < 1.05
    assert disk_needed(cfg, len(CLASSES)) == (2 + 2 + 1) * size  # epochs 1 and 2 (64 is past the end), and a stop's
    assert disk_needed(cfg, len(CLASSES), start=1) == (2 + 1 + 1) * size
    assert disk_needed(dataclasses.replace(cfg, keep_epochs=()), len(CLASSES)) == 2 * size


def test_plateau_drops_stop_at_the_floor(data, tmp_path, monkeypatch):
    _plateau(monkeypatch)
    result = train(_config(data, tmp_path, epochs=6, patience=0, min_lr=2e-4, **FAST))
    lrs = [m["lr"] for m in result.metrics]
    assert len(lrs) == 6 and min(lrs) == pytest.approx(2e-4) and all(lr >= 2e-4 for lr in lrs)
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-3, 2e-4, 2e-4, 2e-4])  # epoch 1 sets the best; each later one drops
    assert [m["lr_drops"] for m in result.metrics] == [0, 1, 2, 3, 4, 5]  # plateaus at the floor count too


def test_with_a_floor_the_run_ends_at_its_nth_plateau(data, tmp_path, monkeypatch):
    _plateau(monkeypatch)
    result = train(_config(data, tmp_path, epochs=20, patience=0, min_lr=2e-4, max_lr_drops=4, **FAST))
    assert [m["lr"] for m in result.metrics] == pytest.approx([1e-2, 1e-2, 1e-3, 2e-4, 2e-4])


def test_a_run_that_stops_early_resumes_exactly(data, tmp_path, monkeypatch):
    _plateau(monkeypatch)
    cfg = dict(epochs=20, patience=1, max_lr_drops=2, **FAST)
    whole = train(_config(data, tmp_path / "whole", **cfg))
    first = train(_config(data, tmp_path / "cut", stop_after=2, **cfg))
    assert first.final == {}
    resumed = train(_config(data, tmp_path / "cut", **cfg))
    assert whole.final == resumed.final
    assert [m["lr"] for m in whole.metrics] == [m["lr"] for m in resumed.metrics]
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_schedule_and_radius_options_fail_clearly(data, tmp_path):
    with pytest.raises(ValueError, match="filter_radius must be a positive"):
        train(_config(data, tmp_path, filter_radius=0.0))
    with pytest.raises(ValueError, match="plateau_on must be 'val' or 'train'"):
        train(_config(data, tmp_path, plateau_on="test"))
    with pytest.raises(ValueError, match="max_lr_drops must be at least 1"):
        train(_config(data, tmp_path, max_lr_drops=0))
    with pytest.raises(ValueError, match="min_lr and max_lr_drops bound the plateau"):
        train(_config(data, tmp_path, schedule="cosine", min_lr=1e-4))


def _ddp_worker(rank: int, port: int, cfg: TrainConfig, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    logging.basicConfig(filename=f"{out}/rank{rank}.log", level=logging.INFO, force=True)
    result = train(cfg)
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_keeps_ranks_in_step(data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(data, tmp_path / "run", epochs=1, width=0.0625, final_train_error=False)
    mp.spawn(_ddp_worker, args=(port, cfg, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # gradients were all-reduced every step
    final = json.loads((tmp_path / "run" / "result.json").read_text())
    assert final["val_10crop_n"] == 18  # both ranks' val shards counted once
    # the 10-crop probabilities of both ranks' images, gathered on rank 0: an ensemble of one gives the run's errors
    alone = ensemble_errors([tmp_path / "run" / PREDICTIONS])
    assert alone["n"] == 18 and alone["top1_err"] == pytest.approx(final["val_10crop_top1_err"])
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["img_per_s"] > 0


@pytest.mark.slow
def test_ddp_ranks_pick_their_own_loader_and_still_step_together(data, tmp_path):
    # 40 images in 5 shards: rank 0 holds 24, rank 1 16; a budget of 20 images caches on rank 1 only.
    write_split(*_images(40, 2), tmp_path / "train", "train", CLASSES, size=SIZE, per_shard=8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(data, tmp_path / "run", shards=str(tmp_path / "train"), epochs=1, width=0.0625, loader="auto",
                  cache_budget_gb=20 * 3 * SIZE * SIZE / 1e9, workers=1, final_train_error=False, final_ten_crop=False)
    mp.spawn(_ddp_worker, args=(port, cfg, str(tmp_path)), nprocs=2, join=True)
    train_line = [next(line for line in (tmp_path / f"rank{r}.log").read_text().splitlines()
                       if f"{tmp_path / 'train'} decoded" in line) for r in (0, 1)]
    assert "loader auto -> stream" in train_line[0] and "loader auto -> cache" in train_line[1]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)


@pytest.mark.parametrize("over", [{}, {"keep_epochs": ()}, {"keep_epochs": (3, 7), "filter_radius": 0.1,
                                     "max_lr_drops": 2, "compile": True, "amp": False, "plateau_on": "train"}])
def test_a_child_training_gets_its_config_back_from_its_flags(over):
    """Tables 1, 2 and 4 train in child processes from these flags: every field must survive the trip."""
    from assets.parallel import train_flags

    cfg = TrainConfig(shards="a", val_shards="b", mean="m.npy", out="o", **over)
    assert parse_args(train_flags(cfg)) == cfg


def test_cli_flags_map_to_config():
    cfg = parse_args(["--shards", "a", "--val-shards", "b", "--mean", "m.npy", "--out", "o", "--arch", "krizhevsky",
                      "--epochs", "5", "--lr", "0.02", "--compile", "--no-amp", "--keep-epochs", "1", "3",
                      "--filter-radius", "0.1", "--max-lr-drops", "3"])
    assert (cfg.filter_radius, cfg.max_lr_drops, cfg.min_lr) == (0.1, 3, 0.0)
    assert (cfg.arch, cfg.epochs, cfg.lr, cfg.compile, cfg.amp, cfg.keep_epochs) == ("krizhevsky", 5, 0.02, True,
                                                                                        False, (1, 3))
    assert cfg.batch_size == 128 and cfg.momentum == 0.9 and cfg.init == "normal"  # the paper's defaults


# ---- tables


def test_tables_put_the_papers_numbers_beside_ours(tmp_path):
    rows = [{"arch": "ours", "train_top1_err": 30.0, "val_top1_err": 39.0, "val_top5_err": 17.0}]
    t, md = table1(rows)
    row = t.to_pylist()[0]
    assert row["paper_val_top1_err"] == 38.3 and row["val_top1_err"] == 39.0
    assert "38.3" in md and "39.0" in md and md.count("\n") >= 3
    t2, md2 = table2(
        {"val_top1_err": 20.0, "val_top5_err": 5.0}, {"val_top1_err": 18.0, "val_top5_err": 4.0, "models": 5}
    )
    assert len(t2) >= 4 and "36.6" in md2 and "18.0" in md2 and "networks alone" not in md2
    members = [{"val_top1_err": e, "val_top5_err": 5.0} for e in (20.0, 21.0, 22.0)]
    _, md3 = table2({"val_top1_err": 20.0, "val_top5_err": 5.0}, None, None, members)
    assert "The ensemble's 3 networks alone: val top-1 error 21.00 +- 1.00 (min 20.00, max 22.00)" in md3
    sizes = [{"models": k, "top1_err": e} for k, e in ((1, 21.0), (2, 19.5))]
    _, md4 = table2({"val_top1_err": 20.0, "val_top5_err": 5.0}, None, None, members, sizes)
    assert "k networks averaged (mean over k-subsets of the ensemble's): 1: 21.00, 2: 19.50." in md4
    assert "k networks averaged" not in md3


def test_table1_averages_an_architectures_seeds_and_says_which_orderings_the_seeds_resolve():
    rows = [{"arch": a, "val_top1_err": e, "val_top5_err": 5.0, "train_top1_err": t} for a, e, t in
            [("ours", 24.0, 1.0), ("ours", 26.0, 3.0), ("krizhevsky", 30.0, 2.0), ("krizhevsky", 30.2, 2.0),
             ("removed_6_7", 27.0, 1.0), ("removed_3_4", 27.5, 1.0)]]
    t, md = table1(rows)
    got = {r["arch"]: r for r in t.to_pylist()}
    assert (got["ours"]["val_top1_err"], got["ours"]["train_top1_err"], got["ours"]["seeds"]) == (25.0, 2.0, 2)
    assert got["ours"]["val_top1_err_sd"] == pytest.approx(2 ** 0.5)
    assert (got["removed_3_4"]["seeds"], got["removed_3_4"]["val_top1_err_sd"]) == (1, None)
    checks = {c["lower"]: c for c in orderings(t, "arch", TABLE1_ORDERINGS)}
    # ours 25.0 +- 1.41 vs 30.1 +- 0.14, two seeds each: the gap (5.1) exceeds 2 x 1.005
    assert checks["ours"]["holds"] is True and checks["ours"]["resolved"] is True
    assert checks["removed_6_7"]["holds"] is True and checks["removed_6_7"]["resolved"] is None  # one seed each
    assert "the gap exceeds two standard errors over the seeds" in md
    close = table1([{"arch": "ours", "val_top1_err": e} for e in (24.0, 26.0)]
                   + [{"arch": "krizhevsky", "val_top1_err": e} for e in (25.5, 26.5)])[1]
    assert "**holds** (val top-1 error, ours vs krizhevsky: ours 25.0 vs 26.0, paper 38.3 vs 40.5; within two " \
           "standard errors over the seeds: not resolved)" in close


def test_the_papers_orderings_are_checked_on_our_rows_and_on_its_own():
    rows = [{"arch": a, "val_top1_err": e} for a, e in
            [("ours", 17.0), ("krizhevsky", 18.0), ("removed_3_4", 25.0), ("removed_6_7", 26.0), ("fc_8192", 18.5)]]
    t, md = table1(rows)
    checks = {c["lower"]: c for c in orderings(t, "arch", TABLE1_ORDERINGS)}
    assert checks["ours"]["holds"] is True and checks["ours"]["paper"] == [38.3, 40.5]
    assert checks["removed_6_7"]["holds"] is False  # removing 6,7 hurt more here: the paper's ordering fails
    assert checks["ours_fc_8192"]["holds"] is None and checks["ours_fc_8192"]["ours"] == [None, 18.5]
    assert "our model beats Krizhevsky et al.'s layout: **holds**" in md and "**does not hold**" in md
    assert "not run" in md
    for paper_check in orderings(table1([{"arch": a} for a in TABLE1_LABELS])[0], "arch", TABLE1_ORDERINGS):
        assert paper_check["paper"][0] < paper_check["paper"][1]  # each ordering holds in the paper's own numbers
    _, md2 = table2({"val_top1_err": 20.0, "val_top5_err": 5.0}, {"val_top1_err": 18.0, "val_top5_err": 4.0})
    assert "the ensemble beats one model: **holds** (val top-1 error, 5 convnets as per Fig. 2 vs 1 convnet" in md2


def test_endless_runs_epoch_after_epoch():
    from itertools import islice

    from zf_pipeline.data.loader import endless

    class TwoBatches:
        def epoch(self, epoch: int):
            yield epoch, "a"
            yield epoch, "b"

    assert list(islice(endless(TwoBatches()), 5)) == [(1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, "a")]


# ---- benchmarks/init_study.py on the CPU


def _init_study():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "init_study.py"
    spec = importlib.util.spec_from_file_location("init_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_init_study_prints_a_row_per_recipe_and_writes_json(data, tmp_path, capsys):
    study = _init_study()
    args = ["--shards", str(data / "train"), "--val-shards", str(data / "val"), "--mean", str(data / "pixel_mean.npy"),
            "--out", str(tmp_path / "runs"), "--epochs", "2", "--recipes", "kaiming", "normal+radius",
            "--json", str(tmp_path / "rows.json"), "--set", "width=0.0625", "crop=64", "batch_size=8", "device=cpu",
            "warmup_epochs=0", "final_train_error=false"]
    rows = study.main(args)
    assert [r["recipe"] for r in rows] == ["kaiming", "normal+radius"]
    assert all(r["epochs_run"] == 2 and 0 <= r["conv1_hf_median"] <= 1 for r in rows)
    saved = json.loads((tmp_path / "runs" / "normal+radius" / "result.json").read_text())
    assert rows[1]["val_top1_10crop"] == saved["val_10crop_top1_err"]
    assert load_checkpoint(tmp_path / "runs" / "normal+radius" / "last.pt")["train_config"]["filter_radius"] == 0.1
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    out = capsys.readouterr().out
    assert "| recipe | val_top1_center |" in out and "| normal+radius | " in out
    with pytest.raises(SystemExit, match="--set 'widht=1'"):
        study.main(args[:-6] + ["widht=1"])


def test_init_study_runs_recipes_in_parallel_processes_and_chooses_by_its_rule(data, tmp_path, capsys):
    import yaml

    study = _init_study()
    args = ["--shards", str(data / "train"), "--val-shards", str(data / "val"), "--mean", str(data / "pixel_mean.npy"),
            "--out", str(tmp_path / "runs"), "--epochs", "1", "--recipes", "kaiming", "small-conv1", "--jobs", "2",
            "--json", str(tmp_path / "rows.json"), "--choose", str(tmp_path / "recipe.yaml"), "--set", "width=0.0625",
            "crop=64", "batch_size=8", "device=cpu", "warmup_epochs=0", "final_train_error=false"]
    rows = study.main(args)
    assert [r["recipe"] for r in rows] == ["kaiming", "small-conv1"]
    assert all((tmp_path / "runs" / f"{r}.log").stat().st_size > 0 for r in ("kaiming", "small-conv1"))
    config = yaml.safe_load((tmp_path / "recipe.yaml").read_text())["ops"]["zfnet_model"]["config"]
    assert config == study.choose(rows)[0] and config["init"] == "kaiming"
    assert "chose " in capsys.readouterr().out


def test_init_study_rule_takes_the_smoothest_init_within_a_point_and_the_stop_within_half():
    study = _init_study()

    def row(recipe, err, hf, epochs=70):
        return dict(recipe=recipe, val_top1_10crop=err, conv1_hf_median=hf, epochs_run=epochs)

    rows = [row("kaiming", 17.0, 0.75), row("normal", 90.0, 0.05), row("normal+radius", float("nan"), 0.1),
            row("kaiming+radius", 17.8, 0.30), row("small-conv1", 18.5, 0.10), row("kaiming+stop", 17.4, 0.75, 40)]
    config, why = study.choose(rows)
    assert config == {**study.ASSET_CONFIG["kaiming+radius"], **study.STOP}
    assert why.startswith("kaiming+radius") and "40 epochs against 70" in why
    rows[-1]["val_top1_10crop"] = 17.6  # the stop costs more than half a point: the full schedule stays
    rows[3]["val_top1_10crop"] = 18.1  # and no smoother init is within a point
    assert study.choose(rows)[0] == study.ASSET_CONFIG["kaiming"]
    with pytest.raises(SystemExit, match="kaiming"):
        study.choose(rows[1:])
