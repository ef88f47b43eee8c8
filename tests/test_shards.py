"""WebDataset sharding (paper preprocessing, bad input, determinism, resume) and the per-pixel mean."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from zf_pipeline.data import shards
from zf_pipeline.data.pixel_mean import compute_pixel_mean, load_pixel_mean, save_pixel_mean
from zf_pipeline.data.preprocess import Preprocessing, UnusableImage, decode, preprocess
from zf_pipeline.data.records import ImageRecord, ImageSet, tar_source
from zf_pipeline.data.shard_format import (
    IncompleteShards,
    iter_shard,
    load_classes,
    load_manifest,
    load_skipped,
    load_summary,
    shard_name,
    shard_paths,
)
from zf_pipeline.data.shards import split_order, write_shards
from zf_pipeline.io import folder_lock

SIZE = 32


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(seed: int, width: int = 60, height: int = 45) -> Image.Image:
    """A smooth random RGB image (JPEG-friendly, distinct per seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


# Each bad-input kind that occurs in real ImageNet: (make its bytes, expected skip reason or None if converted).
BAD_INPUTS = {
    "truncated_jpeg": (lambda: encode(photo(1, 200, 150), "JPEG")[:900], "truncated"),
    "garbage_bytes": (lambda: b"<html>not an image</html>" * 20, "UnidentifiedImageError"),
    "empty_file": (lambda: b"", "UnidentifiedImageError"),
    "cmyk_jpeg": (lambda: encode(photo(2).convert("CMYK"), "JPEG"), None),
    "grayscale_jpeg": (lambda: encode(photo(3).convert("L"), "JPEG"), None),
    "png_named_jpeg": (lambda: encode(photo(4), "PNG"), None),
    "rgba_png": (lambda: encode(photo(5).convert("RGBA"), "PNG"), None),
    "palette_png_with_transparency": (lambda: encode(photo(6).convert("P"), "PNG", transparency=0), None),
}

# The inputs that must be skipped (a missing file is added by make_imageset).
UNUSABLE = {kind for kind, (_, reason) in BAD_INPUTS.items() if reason} | {"missing"}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_converted_or_skipped_with_reason(kind):
    make, skip_reason = BAD_INPUTS[kind]
    data = make()
    if skip_reason is None:
        out = Image.open(io.BytesIO(preprocess(data, Preprocessing(size=SIZE))))
        assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (SIZE, SIZE))
    else:
        with pytest.raises(UnusableImage) as error:
            preprocess(data, Preprocessing(size=SIZE))
        assert error.value.reason.startswith(skip_reason)


def test_grayscale_stays_grey_and_cmyk_keeps_its_colour():
    grey = np.asarray(
        Image.open(io.BytesIO(preprocess(encode(photo(3).convert("L"), "JPEG"), Preprocessing(size=SIZE))))
    )
    assert np.abs(grey[..., 0].astype(int) - grey[..., 2]).max() <= 2
    red = Image.new("RGB", (40, 40), (220, 20, 20))
    out = np.asarray(Image.open(io.BytesIO(preprocess(encode(red.convert("CMYK"), "JPEG"), Preprocessing(size=SIZE)))))
    assert np.abs(out.reshape(-1, 3).mean(0) - (220, 20, 20)).max() < 8


@pytest.mark.parametrize("width,height", [(300, 200), (200, 300)])
def test_center_crop_geometry(width, height):
    # Bands outside the centered square must be cropped away; a black square at the center stays centered.
    canvas = np.full((height, width, 3), (255, 0, 0), dtype=np.uint8)
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    canvas[top : top + side, left : left + side] = (0, 200, 0)
    canvas[height // 2 - 20 : height // 2 + 20, width // 2 - 20 : width // 2 + 20] = 0
    out = np.asarray(
        Image.open(io.BytesIO(preprocess(encode(Image.fromarray(canvas), "PNG"), Preprocessing(size=100))))
    )
    assert out.shape == (100, 100, 3)
    assert out[..., 0].max() < 80, "red bands outside the center square survived the crop"
    dark = np.argwhere(out.sum(axis=2) < 100)
    # The 40 px square of a 200 px side becomes 20 px of 100, centered at 49.5.
    assert np.allclose(dark.mean(axis=0), (49.5, 49.5), atol=0.6)
    assert 18 <= np.ptp(dark[:, 0]) + 1 <= 22


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_result():
    big = photo(7, 2000, 1000)
    data = encode(big, "JPEG", quality=95)
    drafted = decode(data, SIZE)
    assert drafted.size == (250, 125) and min(drafted.size) >= 2 * SIZE  # libjpeg scale 1/8
    fast = np.asarray(Image.open(io.BytesIO(preprocess(data, Preprocessing(size=SIZE, quality=100)))), dtype=float)
    exact = np.asarray(big.crop((500, 0, 1500, 1000)).resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=float)
    assert np.abs(fast - exact).mean() < 3


def make_imageset(root: Path, split: str = "train", good: int = 14, with_bad: bool = True) -> ImageSet:
    """An ImageSet of plain files: ``good`` RGB JPEGs of 3 classes plus every bad-input kind and a missing file."""
    root.mkdir(parents=True, exist_ok=True)
    classes = ["n001", "n002", "n003"]
    records = []
    files = {f"img{i:03d}": encode(photo(100 + i, 50 + 7 * i, 40 + 3 * i), "JPEG") for i in range(good)}
    if with_bad:
        files.update({kind: make() for kind, (make, _) in BAD_INPUTS.items()})
    for i, (name, data) in enumerate(sorted(files.items())):
        path = root / f"{name}.JPEG"
        path.write_bytes(data)
        label = i % len(classes)
        records.append(ImageRecord(image_id=name, source=str(path), label=label, class_id=classes[label]))
    if with_bad:
        records.append(ImageRecord(image_id="missing", source=str(root / "missing.JPEG"), label=0, class_id="n001"))
    return ImageSet(
        name="fixture", root=root, split=split, classes=classes, class_names=["a", "b", "c"], records=records
    )


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(folder.iterdir())
        if path.suffix in (".tar", ".parquet", ".json")
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    images = make_imageset(root / "src")
    summary = write_shards(images, root / "out", size=SIZE, images_per_shard=4, seed=3, workers=1, progress=False)
    return images, root / "out", summary


def test_counts_manifest_skip_list_and_summary(written):
    images, out, summary = written
    bad = UNUSABLE
    assert summary["images_in"] == len(images) == summary["images_written"] + summary["images_skipped"]
    assert summary["images_skipped"] == len(bad)
    assert summary["shards"] == [f"train-{i:06d}.tar" for i in range(-(-len(images) // 4))]
    assert (summary["size"], summary["quality"], summary["seed"]) == (SIZE, 90, 3)
    assert load_summary(out) == summary and [p.name for p in shard_paths(out)] == summary["shards"]

    skipped = load_skipped(out).to_pylist()
    assert {row["image_id"] for row in skipped} == bad
    reasons = {row["image_id"]: row["reason"] for row in skipped}
    assert reasons["truncated_jpeg"].startswith("truncated")
    assert reasons["missing"].startswith("unreadable: FileNotFoundError")
    assert reasons["garbage_bytes"].startswith("UnidentifiedImageError")

    manifest = load_manifest(out)
    assert manifest.schema.field("label").type == pa.int32()
    assert manifest.column_names == ["image_id", "source", "split", "shard", "key", "label", "class_id"]
    rows = manifest.to_pylist()
    assert len(rows) == summary["images_written"]
    assert {row["image_id"] for row in rows} == {r.image_id for r in images.records} - bad
    order = [r.image_id for r in split_order(images, seed=3)]
    by_id = {r.image_id: r for r in images.records}
    for row in rows:
        position = int(row["key"])
        assert order[position] == row["image_id"] and row["shard"] == f"train-{position // 4:06d}.tar"
        assert (row["label"], row["class_id"], row["source"]) == (
            by_id[row["image_id"]].label,
            by_id[row["image_id"]].class_id,
            by_id[row["image_id"]].source,
        )
    assert load_classes(out) == (images.classes, images.class_names)
    assert json.loads((out / "config.json").read_text())["images_per_shard"] == 4


def test_shards_hold_what_the_manifest_says(written):
    images, out, summary = written
    manifest = {row["key"]: row for row in load_manifest(out).to_pylist()}
    seen = {}
    for path in shard_paths(out):
        for sample in iter_shard(path):
            seen[sample.key] = path.name
            row = manifest[sample.key]
            assert sample.label == row["label"] and sample.meta["image_id"] == row["image_id"]
            assert Image.open(io.BytesIO(sample.jpeg)).size == (SIZE, SIZE)
    assert seen == {key: row["shard"] for key, row in manifest.items()}


def test_readable_by_webdataset(written):
    wds = pytest.importorskip("webdataset")
    images, out, summary = written
    manifest = {row["key"]: row for row in load_manifest(out).to_pylist()}
    dataset = wds.WebDataset([str(p) for p in shard_paths(out)], shardshuffle=False, empty_check=False)
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == sorted(manifest)
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["image_id"] == manifest[sample["__key__"]]["image_id"]
        assert set(meta) == {"image_id", "label", "class_id", "source", "labels"}
        assert int(sample["cls"]) == meta["label"]
        assert Image.open(io.BytesIO(sample["jpg"])).mode == "RGB"


def test_split_order_train_shuffled_by_seed_val_sorted(tmp_path):
    images = make_imageset(tmp_path, good=30, with_bad=False)
    ids = sorted(r.image_id for r in images.records)
    first, again, other = ([r.image_id for r in split_order(images, seed)] for seed in (0, 0, 1))
    assert first == again and first != other and sorted(first) == ids and first != ids
    images.split = "val"
    images.records.reverse()
    assert [r.image_id for r in split_order(images, seed=5)] == ids


@pytest.mark.parametrize("images_per_shard", [4, 100])  # 6 shards (4 whole, 2 cut in parts); 1 shard in parts
def test_byte_identical_across_runs_and_worker_counts(tmp_path, images_per_shard):
    images = make_imageset(tmp_path / "src")
    options = dict(size=SIZE, images_per_shard=images_per_shard, seed=3, progress=False)
    one = write_shards(images, tmp_path / "one", workers=1, **options)
    two = write_shards(images, tmp_path / "two", workers=2, **options)
    assert one == two
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")
    # Another seed shuffles differently, so the bytes must differ (the comparison can fail).
    write_shards(images, tmp_path / "seed4", workers=1, **{**options, "seed": 4})
    assert folder_bytes(tmp_path / "seed4")["train-000000.tar"] != folder_bytes(tmp_path / "one")["train-000000.tar"]


def tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """The oracle: the same members written by ``tarfile`` itself (as the writer did before it wrote parts)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("sizes", [[], [0], [1], [511, 512, 513], [8704], [8703], [20000, 3]])
def test_tar_members_and_end_are_what_tarfile_writes(sizes):
    # 8704 bytes of data + a 512 header end 1024 short of a 10240-byte record: the end fills it exactly.
    members = [(f"{i:09d}.jpg", np.random.default_rng(i).bytes(size)) for i, size in enumerate(sizes)]
    body = b"".join(shards._tar_member(name, data) for name, data in members)
    assert body + shards._tar_end(len(body)) == tarfile_bytes(members)


def test_written_shards_are_what_tarfile_writes(written):
    _, out, _ = written
    for path in shard_paths(out):
        with tarfile.open(path) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar]
        assert path.read_bytes() == tarfile_bytes(members)


@pytest.mark.parametrize("workers", [1, 2, 3, 16])
@pytest.mark.parametrize("pending", [[0, 1, 2, 3, 4], [1, 3], [4]])
def test_plan_cuts_the_last_shards_so_every_worker_has_work(tmp_path, workers, pending):
    records = make_imageset(tmp_path, good=14).records  # 23 records: shards of 5, 5, 5, 5, 3
    order = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    shard_lists = [order[start : start + 5] for start in range(0, len(order), 5)]
    names = [shard_name("train", i) for i in range(len(shard_lists))]
    pieces = shards._plan(tmp_path, names, shard_lists, 5, pending, workers)
    for index in pending:  # every image of a pending shard in exactly one piece, at its own position, in order
        own = [piece for piece in pieces if piece.shard == index]
        assert [r for piece in own for r in piece.records] == shard_lists[index]
        starts = [5 * index + sum(len(piece.records) for piece in own[:k]) for k in range(len(own))]
        assert [piece.start for piece in own] == starts
        assert len({piece.path for piece in own}) == len(own)
    assert {piece.shard for piece in pieces} == set(pending)
    cut = [index for index in pending if sum(piece.shard == index for piece in pieces) > 1]
    if workers == 1:
        assert not cut and len(pieces) == len(pending)
    else:  # the last `workers` shards are cut, so there are at least as many pieces as workers (or images)
        assert cut == pending[-workers:]
        assert len(pieces) >= min(workers, sum(len(shard_lists[index]) for index in pending))


def test_resume_after_interrupted_run_equals_clean_run(tmp_path, monkeypatch):
    images = make_imageset(tmp_path / "src")
    clean = tmp_path / "clean"
    write_shards(images, clean, size=SIZE, images_per_shard=4, seed=3, workers=1, progress=False)

    calls = []
    real = shards.preprocess

    def dies_after_ten(data, config):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt("killed")
        return real(data, config)

    out = tmp_path / "out"
    monkeypatch.setattr(shards, "preprocess", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        write_shards(images, out, size=SIZE, images_per_shard=4, seed=3, workers=1, progress=False)
    finished = sorted(p.name for p in out.glob("*.tar"))
    assert finished and len(finished) < len(load_summary(clean)["shards"])
    assert not (out / "summary.json").exists() and not list(out.glob(".*tmp*"))
    with pytest.raises(IncompleteShards, match="summary.json"):
        shard_paths(out)
    # What a SIGKILL leaves: half-written temporaries (a shard, a worker's part of one) beside the finished shards.
    (out / ".train-000003.tar.tmp-999-deadbeef").write_bytes(b"partial")
    (out / ".train-000004.tar.tmp-part0001").write_bytes(b"partial")

    kept = {name: (out / name).stat().st_ino for name in finished}
    calls.clear()
    monkeypatch.setattr(shards, "preprocess", lambda data, config: calls.append(1) or real(data, config))
    write_shards(images, out, size=SIZE, images_per_shard=4, seed=3, workers=1, progress=False)
    assert {name: (out / name).stat().st_ino for name in finished} == kept, "finished shards were rewritten"
    assert len(calls) < len(images)
    assert folder_bytes(out) == folder_bytes(clean)
    assert not list(out.glob(".*tmp*"))


def test_finished_folder_is_reused_and_changed_config_redone(tmp_path, monkeypatch):
    images = make_imageset(tmp_path / "src", good=6, with_bad=False)
    out = tmp_path / "out"
    first = write_shards(images, out, size=SIZE, images_per_shard=4, seed=0, workers=1, progress=False)
    monkeypatch.setattr(shards, "preprocess", lambda *args: pytest.fail("a finished folder was recomputed"))
    assert write_shards(images, out, size=SIZE, images_per_shard=4, seed=0, workers=1, progress=False) == first
    monkeypatch.undo()
    assert first["shards"] == ["train-000000.tar", "train-000001.tar"]
    second = write_shards(images, out, size=SIZE, images_per_shard=6, seed=0, workers=1, progress=False)
    assert second["shards"] == ["train-000000.tar"] and [p.name for p in out.glob("*.tar")] == ["train-000000.tar"]
    assert len(list(iter_shard(out / "train-000000.tar"))) == 6
    assert json.loads((out / "config.json").read_text())["images_per_shard"] == 6


def test_pixel_mean_equals_brute_force(written, tmp_path):
    _, out, summary = written
    stack = [
        np.asarray(Image.open(io.BytesIO(s.jpeg)).convert("RGB"), dtype=np.float64)
        for p in shard_paths(out)
        for s in iter_shard(p)
    ]
    assert len(stack) == summary["images_written"]
    expected = np.mean(stack, axis=0)
    for workers in (1, 2):
        mean = compute_pixel_mean(out, workers=workers)
        assert mean.dtype == np.float32 and mean.shape == (SIZE, SIZE, 3)
        np.testing.assert_allclose(mean, expected, rtol=1e-6)
    save_pixel_mean(tmp_path / "mean.npy", mean)
    np.testing.assert_array_equal(load_pixel_mean(tmp_path / "mean.npy"), mean)
    assert not [p for p in tmp_path.iterdir() if p.name != "mean.npy"]


def test_pixel_mean_bad_inputs(tmp_path):
    with pytest.raises(IncompleteShards, match=str(tmp_path)):
        compute_pixel_mean(tmp_path)
    only_bad = make_imageset(tmp_path / "src", good=0)
    only_bad.records = [record for record in only_bad.records if record.image_id in UNUSABLE]
    summary = write_shards(only_bad, tmp_path / "empty", size=SIZE, workers=1, progress=False)
    assert summary["images_written"] == 0 and summary["images_skipped"] == len(only_bad) == 4
    with pytest.raises(ValueError, match="no images"):
        compute_pixel_mean(tmp_path / "empty")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"flat\.npy.*\(size, size, 3\)"):
        load_pixel_mean(tmp_path / "flat.npy")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_pixel_mean(tmp_path / "pickled.npy")


@pytest.mark.realdata
def test_real_imagenette_subset(shared_data, tmp_path):
    wds = pytest.importorskip("webdataset")
    train = shared_data / "imagenette" / "train"
    classes = sorted(p.name for p in train.iterdir())[:2]
    files = [path for c in classes for path in sorted((train / c).glob("*.JPEG"))[:150]]
    records = [
        ImageRecord(
            image_id=f"{p.parent.name}/{p.stem}",
            source=str(p),
            label=classes.index(p.parent.name),
            class_id=p.parent.name,
        )
        for p in files
    ]
    images = ImageSet(
        name="imagenette", root=train, split="train", classes=classes, class_names=classes, records=records
    )
    summary = write_shards(images, tmp_path / "out", size=64, images_per_shard=128, workers=2, progress=False)
    assert summary["images_in"] == 300 == summary["images_written"] + summary["images_skipped"]
    assert summary["images_written"] >= 295 and len(summary["shards"]) == 3
    samples = list(wds.WebDataset([str(p) for p in shard_paths(tmp_path / "out")], shardshuffle=False))
    assert len(samples) == summary["images_written"]
    labels = [int(s["cls"]) for s in samples]
    assert set(labels) == {0, 1} and labels != sorted(labels), "train order is not shuffled"
    mean = compute_pixel_mean(tmp_path / "out", workers=2)
    assert mean.shape == (64, 64, 3) and 60 < mean.mean() < 200 and mean.std() > 0.5


def test_sources_inside_tars_are_sharded_like_files(tmp_path):
    files = make_imageset(tmp_path / "src", good=5, with_bad=False)
    with tarfile.open(tmp_path / "images.tar", "w") as tar:
        for record in files.records:
            tar.add(record.source, arcname=Path(record.source).name)
    in_tar = [
        ImageRecord(r.image_id, tar_source(tmp_path / "images.tar", Path(r.source).name), r.label, r.class_id)
        for r in files.records
    ]
    tarred = ImageSet("fixture", tmp_path, "train", files.classes, files.class_names, in_tar)
    write_shards(files, tmp_path / "from_files", size=SIZE, images_per_shard=4, workers=1, progress=False)
    write_shards(tarred, tmp_path / "from_tar", size=SIZE, images_per_shard=4, workers=1, progress=False)
    jpegs = [[s.jpeg for p in shard_paths(tmp_path / d) for s in iter_shard(p)] for d in ("from_files", "from_tar")]
    assert len(jpegs[0]) == 5 and jpegs[0] == jpegs[1]
    assert (
        load_manifest(tmp_path / "from_tar")
        .column("source")
        .to_pylist()[0]
        .startswith(str(tmp_path / "images.tar") + "::")
    )


# A run of write_shards in its own process over records listed in a JSON file. "pause" stops in the sixth
# image (a shard written, the next one's temporary open) until a line arrives on stdin; "pool" uses 2 workers.
RUNNER = """
import json, sys
from pathlib import Path
from zf_pipeline.data import shards
from zf_pipeline.data.records import ImageRecord, ImageSet


def main(role, listing, out):
    records = [ImageRecord(**row) for row in json.loads(Path(listing).read_text())]
    images = ImageSet("fixture", Path(out).parent, "train", ["n001", "n002", "n003"], ["a", "b", "c"], records)
    calls, real = [], shards.preprocess

    def preprocess(data, config):
        calls.append(1)
        if role == "pause" and len(calls) == 6:
            print("paused", flush=True)
            sys.stdin.readline()
        return real(data, config)

    shards.preprocess = preprocess
    workers = 2 if role == "pool" else 1
    summary = shards.write_shards(images, out, size=32, images_per_shard=4, seed=3, workers=workers, progress=False)
    print(json.dumps({"calls": len(calls), "written": summary["images_written"]}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
"""


def run_writer(role: str, listing: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runner = listing.with_name("runner.py")  # a file, not -c: forkserver pool workers import the main script
    runner.write_text(RUNNER)
    return subprocess.Popen(
        [sys.executable, str(runner), role, str(listing), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, with the pool's processes, for a kill -9 of all
    )


def list_records(images: ImageSet, path: Path) -> Path:
    path.write_text(json.dumps([dataclasses.asdict(record) for record in images.records]))
    return path


def waits_on_a_lock(pid: int) -> bool:
    """Whether process ``pid`` is blocked waiting for a file lock (Linux's /proc/locks marks waiters '->')."""
    return any("->" in line and f" {pid} " in line for line in Path("/proc/locks").read_text().splitlines())


def test_second_run_on_one_folder_waits_then_finds_it_complete(tmp_path):
    if not Path("/proc/locks").exists():
        pytest.skip("needs Linux's /proc/locks to see that a process waits on a lock")
    images = make_imageset(tmp_path / "src")
    listing = list_records(images, tmp_path / "records.json")
    write_shards(images, tmp_path / "clean", size=SIZE, images_per_shard=4, seed=3, workers=1, progress=False)

    out = tmp_path / "out"
    first = run_writer("pause", listing, out)
    try:
        assert first.stdout.readline().strip() == "paused"
        in_progress = list(out.glob(".train-*.tar.tmp-*"))
        assert in_progress, "the paused run has no temporary open"
        second = run_writer("plain", listing, out)
        deadline = time.monotonic() + 60
        while not waits_on_a_lock(second.pid):
            assert second.poll() is None, f"the second run did not wait for the first: {second.communicate()}"
            assert time.monotonic() < deadline, "the second run never waited on the folder's lock"
            time.sleep(0.05)  # polls a condition; nothing depends on how long this takes
        assert all(path.exists() for path in in_progress), "the waiting run deleted the first one's temporary"
        first_out, _ = first.communicate("go\n", timeout=60)
        second_out, _ = second.communicate(timeout=60)
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()
    assert (first.returncode, second.returncode) == (0, 0)
    assert json.loads(second_out)["calls"] == 0, "the second run redid the work instead of finding it complete"
    assert json.loads(first_out)["written"] == json.loads(second_out)["written"] == len(images) - len(UNUSABLE)
    assert folder_bytes(out) == folder_bytes(tmp_path / "clean")


def test_caller_holding_the_folders_lock_does_not_block_the_writer(tmp_path):
    # The asset layer (assets/cache.py) holds folder_lock(out) while write_shards fills out.
    images = make_imageset(tmp_path / "src", good=4, with_bad=False)
    finished = threading.Event()

    def write():
        write_shards(images, tmp_path / "out", size=SIZE, workers=1, progress=False)
        finished.set()

    with folder_lock(tmp_path / "out"):
        threading.Thread(target=write, daemon=True).start()
        assert finished.wait(timeout=60), "write_shards waits for a lock its own caller holds"


def test_kill_9_of_a_pool_run_then_resume_equals_a_clean_run(tmp_path):
    images = make_imageset(tmp_path / "src")
    clean = tmp_path / "clean"
    write_shards(images, clean, size=SIZE, images_per_shard=4, seed=3, workers=2, progress=False)
    # The first image of shard 0 becomes a FIFO: reading it blocks, so one worker hangs in shard 0 while the
    # other writes shards 1-5 (1-3 whole, 4-5 cut in parts and joined); then everything is killed.
    blocking = Path(split_order(images, seed=3)[0].source)
    content = blocking.read_bytes()
    blocking.unlink()
    os.mkfifo(blocking)
    out = tmp_path / "out"
    run = run_writer("pool", list_records(images, tmp_path / "records.json"), out)
    later = [shard_name("train", index) for index in range(1, 6)]
    try:
        deadline = time.monotonic() + 120
        while not all((out / name).exists() for name in later):
            assert run.poll() is None, f"the run ended before it was killed: {run.communicate()}"
            assert time.monotonic() < deadline, f"shards 1-5 never appeared: {sorted(os.listdir(out))}"
            time.sleep(0.05)  # polls a condition; nothing depends on how long this takes
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert not (out / "train-000000.tar").exists() and not (out / "summary.json").exists()
    kept = {name: (out / name).stat().st_ino for name in later}

    blocking.unlink()
    blocking.write_bytes(content)
    resumed = write_shards(images, out, size=SIZE, images_per_shard=4, seed=3, workers=2, progress=False)
    assert resumed == load_summary(clean)
    assert {name: (out / name).stat().st_ino for name in later} == kept, "finished shards were rewritten"
    assert folder_bytes(out) == folder_bytes(clean)
    assert not list(out.glob(".*tmp*"))
