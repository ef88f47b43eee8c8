"""The generated demo dataset: layout, determinism, resume, part boxes, and that it is not linearly easy."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zf_pipeline.data import demo
from zf_pipeline.data.demo import (
    FACE_CLASS,
    MARKER,
    PARTS,
    SOURCE_CLASSES,
    TARGET_CLASSES,
    DemoClass,
    draw_image,
    make_demo,
)

SMALL = dict(image_size=64, train_per_class=6, val_per_class=5, target_per_class=4)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoPaths:
    return make_demo(tmp_path_factory.mktemp("demo") / "demo", seed=3, workers=1, **SMALL)


def test_source_has_imagenet_layout(small_demo: demo.DemoPaths) -> None:
    ids = sorted(c.class_id for c in SOURCE_CLASSES)
    for split, count in (("train", 6), ("val", 5)):
        folders = sorted(p.name for p in (small_demo.source / split).iterdir())
        assert folders == ids
        for class_id in ids:
            files = sorted((small_demo.source / split / class_id).iterdir())
            assert len(files) == count and all(f.suffix == ".JPEG" for f in files)
    by_id = sorted(SOURCE_CLASSES, key=lambda c: c.class_id)
    assert small_demo.source_names.read_text().splitlines() == [f"{c.class_id} {c.name}" for c in by_id]
    image = Image.open(next((small_demo.source / "train" / ids[0]).iterdir()))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))


def test_target_has_caltech101_layout(small_demo: demo.DemoPaths) -> None:
    folders = sorted(p.name for p in small_demo.target_categories.iterdir())
    assert folders == sorted(c.class_id for c in TARGET_CLASSES)
    for folder in folders:
        names = sorted(p.name for p in (small_demo.target_categories / folder).iterdir())
        assert names == [f"image_{i:04d}.jpg" for i in range(1, 5)]


def test_readers_read_the_demo(small_demo: demo.DemoPaths) -> None:
    from zf_pipeline.data.readers import open_imageset

    val = open_imageset("imagenet", small_demo.source, "val")
    assert val.classes == sorted(c.class_id for c in SOURCE_CLASSES)
    assert val.class_names[val.classes.index(FACE_CLASS.class_id)] == "face"
    assert len(val) == 50 and {r.label for r in val.records} == set(range(10))
    assert len(open_imageset("imagenet", small_demo.source, "train")) == 60
    target = open_imageset("caltech101", small_demo.target)
    assert target.classes == sorted(c.class_id for c in TARGET_CLASSES) and len(target) == 40


def test_source_and_target_classes_differ() -> None:
    def looks(classes: tuple[DemoClass, ...]) -> set[tuple[str, str, str]]:
        return {(c.shape, c.texture, c.colour) for c in classes}

    assert not looks(SOURCE_CLASSES) & looks(TARGET_CLASSES)
    assert not {c.class_id for c in SOURCE_CLASSES} & {c.class_id for c in TARGET_CLASSES}
    assert not {c.name for c in SOURCE_CLASSES} & {c.name for c in TARGET_CLASSES}
    # ... but they are made of the same primitives, so source features can transfer.
    shared = {c.texture for c in TARGET_CLASSES} & {c.texture for c in SOURCE_CLASSES}
    assert shared >= {"solid", "checker", "dots", "vstripes"}


def test_same_seed_same_bytes_whatever_the_workers(small_demo: demo.DemoPaths, tmp_path: Path) -> None:
    again = make_demo(tmp_path / "again", seed=3, workers=2, **SMALL)
    assert _files(again.root) == _files(small_demo.root)


def test_other_seed_other_images(small_demo: demo.DemoPaths, tmp_path: Path) -> None:
    other = _files(make_demo(tmp_path / "other", seed=4, workers=1, **SMALL).root)
    ours = _files(small_demo.root)
    assert other.keys() == ours.keys()
    images = [k for k in ours if k.lower().endswith((".jpeg", ".jpg"))]
    assert sum(other[k] != ours[k] for k in images) == len(images)


def test_complete_demo_is_returned_without_work(small_demo: demo.DemoPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("a complete demo was regenerated")

    monkeypatch.setattr(demo, "_jobs", fail)
    assert make_demo(small_demo.root, seed=3, **SMALL) == small_demo


def test_killed_run_is_rebuilt(small_demo: demo.DemoPaths, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(small_demo.root, root)
    # What a killed run leaves: no marker, missing and truncated images, a temp file; plus a user file to keep.
    (root / MARKER).unlink()
    first_class = root / "source" / "train" / SOURCE_CLASSES[0].class_id
    victims = sorted(first_class.iterdir())
    victims[0].unlink()
    victims[1].write_bytes(victims[1].read_bytes()[:100])
    (first_class / ".stray.JPEG.tmp-1-abc").write_bytes(b"partial")
    shutil.rmtree(root / "target")
    (root / "notes.txt").write_text("mine")

    make_demo(root, seed=3, workers=1, **SMALL)
    rebuilt = _files(root)
    assert rebuilt.pop("notes.txt") == b"mine"
    assert rebuilt == _files(small_demo.root)


def test_other_settings_rebuild(small_demo: demo.DemoPaths, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(small_demo.root, root)
    make_demo(root, seed=3, workers=1, **{**SMALL, "target_per_class": 3})
    assert json.loads((root / MARKER).read_text())["target_per_class"] == 3
    assert all(len(list(p.iterdir())) == 3 for p in (root / "target" / "101_ObjectCategories").iterdir())


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=str(tmp_path / "file")):
        make_demo(tmp_path / "file", **SMALL)
    with pytest.raises(ValueError, match="train_per_class"):
        make_demo(tmp_path / "d", **{**SMALL, "train_per_class": 0})
    with pytest.raises(ValueError, match="seed"):
        make_demo(tmp_path / "d", seed=-1, **SMALL)
    with pytest.raises(ValueError, match="val_per_class"):
        make_demo(tmp_path / "d", **{**SMALL, "val_per_class": 4})


def test_correspondence_boxes_cover_the_face_parts(small_demo: demo.DemoPaths) -> None:
    spec = json.loads(small_demo.correspondence.read_text())
    assert spec["parts"] == list(PARTS) and len(spec["images"]) == 5
    for entry in spec["images"]:
        image = np.asarray(Image.open(small_demo.root / entry["path"]), np.float32)
        assert entry["path"].startswith(f"source/val/{FACE_CLASS.class_id}/")
        boxes = {k: entry["parts"][k] for k in PARTS}
        x0, y0, x1, y1 = entry["object"]
        # Face colour: the median over the face's bounding box without the parts and the mouth below them.
        outside = np.ones(image.shape[:2], bool)
        for bx0, by0, bx1, by1 in boxes.values():
            assert 0 <= bx0 < bx1 <= 64 and 0 <= by0 < by1 <= 64, entry
            assert x0 <= bx0 and bx1 <= x1 and y0 <= by0 and by1 <= y1, "parts lie on the face"
            outside[by0:by1, bx0:bx1] = False
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        yy, xx = np.mgrid[0:64, 0:64]
        face = outside & ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.8 * r) ** 2) & (yy < cy + 0.3 * r)
        skin = np.median(image[face], axis=0)
        part_like = np.abs(image - skin).sum(-1) > 120
        for part, (bx0, by0, bx1, by1) in boxes.items():
            inside = image[by0:by1, bx0:bx1].reshape(-1, 3)
            assert np.abs(inside.mean(0) - skin).sum() > 60, f"{part} box of {entry['path']} looks like skin"
            # Tight: small, and the 1-pixel ring around it (other parts' boxes aside) is skin, so the part is all
            # inside.
            assert (bx1 - bx0) * (by1 - by0) < 0.05 * 64 * 64
            ring = np.zeros_like(outside)
            ring[max(0, by0 - 1) : by1 + 1, max(0, bx0 - 1) : bx1 + 1] = True
            assert part_like[by0:by1, bx0:bx1].sum() >= 4
            assert (part_like & ring & outside).sum() <= 1, f"{part} of {entry['path']} spills out of its box"
        # The face's own right eye is on the image's left.
        assert boxes["right_eye"][0] < boxes["left_eye"][0]


def test_correspondence_loads_for_table3(small_demo: demo.DemoPaths) -> None:
    from zf_pipeline.analysis.correspondence import load_parts_config

    config = load_parts_config(small_demo.correspondence)
    assert config.parts == PARTS and len(config.images) == 5
    assert all(Path(image.key).is_file() and image.object is not None for image in config.images)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux only")
def test_pool_forks_only_without_other_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    main = threading.main_thread()
    monkeypatch.setattr(threading, "enumerate", lambda: [main])
    assert demo._pool_context().get_start_method() == "fork"
    monkeypatch.setattr(threading, "enumerate", lambda: [main, threading.Thread(target=print)])
    assert demo._pool_context().get_start_method() == "spawn"


@pytest.mark.parametrize("texture, along", [("hstripes", "x"), ("vstripes", "y")])
def test_stripe_orientation_is_drawn(texture: str, along: str) -> None:
    # Horizontal stripes run along x: intensity changes down y, barely along x.
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(5):
        drawing = draw_image(DemoClass("x", "x", "square", texture, "red"), 96, rng)
        x0, y0, x1, y1 = drawing.object_box
        w, h = x1 - x0, y1 - y0
        core = np.asarray(drawing.image, np.float32).mean(-1)[y0 + h // 3 : y1 - h // 3, x0 + w // 3 : x1 - w // 3]
        dx, dy = np.abs(np.diff(core, axis=1)).mean(), np.abs(np.diff(core, axis=0)).mean()
        ratios.append(dy / dx if along == "x" else dx / dy)
    assert min(ratios) > 2


def _pixels(root: Path, split: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, folder in enumerate(sorted((root / "source" / split).iterdir())):
        for f in sorted(folder.iterdir()):
            images.append(np.asarray(Image.open(f).resize((side, side), Image.BOX), np.float32) / 255)
            labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="module")
def probe_demo(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoPaths:
    root = tmp_path_factory.mktemp("probe")
    return make_demo(root, seed=1, image_size=64, train_per_class=60, val_per_class=20, target_per_class=30)


def _linear_accuracy(root: Path) -> float:
    from sklearn.linear_model import RidgeClassifier

    xtr, ytr = _pixels(root, "train", 16)
    xva, yva = _pixels(root, "val", 16)
    xtr, xva = xtr.reshape(len(xtr), -1), xva.reshape(len(xva), -1)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-3
    return RidgeClassifier(alpha=10.0).fit((xtr - mean) / std, ytr).score((xva - mean) / std, yva)


def test_raw_pixels_are_not_linearly_separable(probe_demo: demo.DemoPaths) -> None:
    accuracy = _linear_accuracy(probe_demo.root)
    assert 0.15 < accuracy < 0.75, f"a linear classifier on raw pixels got {accuracy:.2f} (chance 0.10)"


def _target_pixels(paths: demo.DemoPaths) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, folder in enumerate(sorted(paths.target_categories.iterdir())):
        for f in sorted(folder.iterdir()):
            images.append(np.asarray(Image.open(f), np.float32) / 255)
            labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.mark.slow
def test_small_convnet_learns_and_transfers(probe_demo: demo.DemoPaths) -> None:
    """A 3-layer convnet beats the raw-pixel linear classifier on the source, and its features
    beat those of the same net untrained on the target classes (15 train / 15 test per class)."""
    torch = pytest.importorskip("torch")
    from sklearn.linear_model import LogisticRegression
    from torch import nn

    xtr, ytr = _pixels(probe_demo.root, "train", 64)
    xva, yva = _pixels(probe_demo.root, "val", 64)
    xtg, ytg = _target_pixels(probe_demo)
    xtr, xva, xtg = (torch.from_numpy(x).permute(0, 3, 1, 2) - 0.5 for x in (xtr, xva, xtg))
    ytr = torch.from_numpy(ytr)

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    torch.manual_seed(0)
    features = [*block(3, 16), *block(16, 32), *block(32, 64), nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    net = nn.Sequential(*features, nn.Linear(64, 10))

    def target_accuracy() -> float:
        net.eval()
        with torch.no_grad():
            features = net[:-1](xtg).numpy()
        train = np.arange(len(ytg)) % 30 < 15
        mean, std = features[train].mean(0), features[train].std(0) + 1e-6
        probe = LogisticRegression(max_iter=1000).fit((features[train] - mean) / std, ytg[train])
        return probe.score((features[~train] - mean) / std, ytg[~train])

    untrained = target_accuracy()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for epoch in range(5):
        net.train()
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(epoch))
        for k in range(0, len(order), 32):
            batch = order[k : k + 32]
            loss = nn.functional.cross_entropy(net(xtr[batch]), ytr[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        convnet = (net(xva).argmax(1).numpy() == yva).mean()
    linear = _linear_accuracy(probe_demo.root)
    assert convnet > linear + 0.25, f"source: convnet {convnet:.2f} vs linear on raw pixels {linear:.2f}"
    pretrained = target_accuracy()
    assert pretrained > untrained + 0.1, (
        f"target: source-trained features {pretrained:.2f} vs untrained {untrained:.2f}"
    )


@pytest.mark.slow
def test_default_demo(tmp_path: Path) -> None:
    paths = make_demo(tmp_path / "demo")
    assert len(list(paths.source.glob("train/*/*.JPEG"))) == 10 * 200
    assert len(list(paths.source.glob("val/*/*.JPEG"))) == 10 * 50
    assert len(list(paths.target_categories.glob("*/*.jpg"))) == 10 * 60
    assert Image.open(next(paths.source.glob("val/*/*.JPEG"))).size == (128, 128)
    assert len(json.loads(paths.correspondence.read_text())["images"]) == 5
