"""Dataset readers on generated fixtures in the real layouts, and on the real images in ZF_SHARED_DATA."""

from __future__ import annotations

import io
import os
import random
import shutil
import tarfile
from pathlib import Path

import pytest
from layouts import (
    CALTECH101_CLASSES,
    CALTECH256_CLASSES,
    IMAGENET_SYNSETS,
    VOC_EXAMPLE,
    jpeg_bytes,
    png_bytes,
    tar_bytes,
    val_name,
    write_caltech101,
    write_caltech256,
    write_file,
    write_imagenet_devkit,
    write_imagenet_kaggle,
    write_imagenet_train,
    write_imagenet_val,
    write_loc_synset_mapping,
    write_voc2012,
)

from zf_pipeline.data.imagenet import synset_names
from zf_pipeline.data.readers import KINDS, open_imageset
from zf_pipeline.data.records import DatasetLayoutError, ImageRecord, _scan_plain, iter_bytes, read_bytes, tar_members
from zf_pipeline.data.voc import VOC_CLASSES

SYNSETS = sorted(IMAGENET_SYNSETS)  # the class order every ImageNet layout must give
BUILTIN = synset_names(Path("/nonexistent"))  # the built-in table of the 1,000 ILSVRC-2012 classes
# Val image k (1-based) is of VAL_SYNSETS[k-1]: not grouped, not sorted.
VAL_SYNSETS = ["n02102040", "n01440764", "n01443537", "n01440764", "n02102040", "n02102040"]


def _expected_val() -> dict[str, int]:
    """image id -> class index of the val fixture, derived from VAL_SYNSETS and sorted synset order."""
    return {f"{w}/{val_name(k).removesuffix('.JPEG')}": SYNSETS.index(w) for k, w in enumerate(VAL_SYNSETS, 1)}


# ---------------------------------------------------------------- ImageNet train


@pytest.mark.parametrize("layout", ["folders", "class-tars", "tar"])
def test_imagenet_train_layouts_agree(tmp_path: Path, layout: str) -> None:
    root = write_imagenet_train(tmp_path, per_class=4, layout=layout)
    s = open_imageset("imagenet", root, "train")
    assert (s.name, s.split, s.root) == ("imagenet", "train", tmp_path.absolute())
    assert s.classes == SYNSETS
    # No devkit, no mapping: the built-in ILSVRC-2012 table (its words are the devkit's)
    assert s.class_names == [IMAGENET_SYNSETS[w] for w in SYNSETS]
    assert len(s) == 4 * len(SYNSETS)
    ids = [r.image_id for r in s.records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[:4] == [f"{SYNSETS[0]}/{SYNSETS[0]}_{n}" for n in (1, 2, 3, 4)]
    for r in s.records:
        wnid = r.image_id.split("/")[0]
        assert (r.class_id, r.label) == (wnid, SYNSETS.index(wnid))
    for r, data in iter_bytes(s.records):
        assert data == jpeg_bytes(r.image_id)


def test_imagenet_train_tar_sources_are_nested(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path, layout="tar")
    r = open_imageset("imagenet", root).records[0]
    outer = str(tmp_path.absolute() / "ILSVRC2012_img_train.tar")
    assert r.source == f"{outer}::{SYNSETS[0]}.tar::{SYNSETS[0]}_1.JPEG"
    assert read_bytes(r.source) == jpeg_bytes(r.image_id)


def test_imagenet_train_lists_by_extension_only(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path, per_class=1)
    folder = root / "train" / SYNSETS[0]
    write_file(folder / "png_in_disguise.JPEG", png_bytes("p"))  # real ImageNet has these: listed
    write_file(folder / "upper.JPG", jpeg_bytes("u"))
    write_file(folder / "notes.txt", b"not an image")
    write_file(folder / "._n01440764_1.JPEG", b"macOS resource fork")
    write_file(folder / "nested" / "x.JPEG", jpeg_bytes("x"))  # no recursion into subfolders
    ids = {r.image_id for r in open_imageset("imagenet", root).records if r.class_id == SYNSETS[0]}
    assert ids == {f"{SYNSETS[0]}/{SYNSETS[0]}_1", f"{SYNSETS[0]}/png_in_disguise", f"{SYNSETS[0]}/upper"}


def test_duplicate_image_ids_are_an_error(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path, per_class=1)
    write_file(root / "train" / SYNSETS[0] / f"{SYNSETS[0]}_1.png", png_bytes("d"))
    with pytest.raises(DatasetLayoutError, match=f"{SYNSETS[0]}_1"):
        open_imageset("imagenet", root)


# ---------------------------------------------------------------- ImageNet val


@pytest.mark.parametrize("layout,packed", [("folders", False), ("flat", False), ("flat", True), ("tar", False)])
def test_imagenet_val_layouts_share_train_indices(tmp_path: Path, layout: str, packed: bool) -> None:
    write_imagenet_train(tmp_path, layout="tar")
    write_imagenet_val(tmp_path, VAL_SYNSETS, layout=layout, packed_devkit=packed)
    train, val = open_imageset("imagenet", tmp_path, "train"), open_imageset("imagenet", tmp_path, "val")
    assert val.classes == train.classes == SYNSETS
    assert {r.image_id: r.label for r in val.records} == _expected_val()
    assert [r.image_id for r in val.records] == sorted(_expected_val())
    for r, data in iter_bytes(val.records):
        assert data == jpeg_bytes(r.image_id.split("/")[1])
    if layout != "folders":  # names from the devkit's meta.mat
        assert val.class_names == [IMAGENET_SYNSETS[w] for w in SYNSETS] == train.class_names


def test_imagenet_val_tar_with_dot_slash_members(tmp_path: Path) -> None:
    # `tar cf val.tar .` writes './ILSVRC2012_val_...' member names
    write_imagenet_val(tmp_path, VAL_SYNSETS[:2], layout="flat")
    members = {f"./{val_name(k)}": (tmp_path / "val" / val_name(k)).read_bytes() for k in (1, 2)}
    shutil.rmtree(tmp_path / "val")
    write_file(tmp_path / "ILSVRC2012_img_val.tar", tar_bytes(members))
    val = open_imageset("imagenet", tmp_path, "val")
    assert [r.image_id for r in val.records] == [
        "n01440764/ILSVRC2012_val_00000002",
        "n02102040/ILSVRC2012_val_00000001",
    ]
    assert read_bytes(val.records[0].source) == jpeg_bytes("ILSVRC2012_val_00000002")


def test_imagenet_val_index_follows_train_not_val(tmp_path: Path) -> None:
    # Val lacks the first synset: its classes and indices must still be train's.
    write_imagenet_train(tmp_path)
    write_imagenet_val(tmp_path, ["n02102040", "n01443537"], layout="flat")
    val = open_imageset("imagenet", tmp_path, "val")
    assert val.classes == SYNSETS
    assert sorted(r.label for r in val.records) == [1, 2]


@pytest.mark.parametrize("labels", ["devkit", "mapping", "builtin"])
def test_imagenet_val_only_subset_keeps_the_ilsvrc_indices(tmp_path: Path, labels: str) -> None:
    """No train split and a val covering 2 of the classes: indices come from the full synset list (the devkit's
    leaves, Kaggle's mapping or the built-in 1,000), not from the synsets val happens to hold."""
    present = ["n02102040", "n01443537", "n02102040"]
    write_imagenet_val(tmp_path, present, layout="flat" if labels == "devkit" else "folders")
    if labels == "devkit":
        write_imagenet_devkit(tmp_path, IMAGENET_SYNSETS, present)  # all 3 fixture classes as leaves, 2 non-leaves
    if labels == "mapping":
        write_loc_synset_mapping(tmp_path)  # all 3 fixture classes
    full = sorted(BUILTIN) if labels == "builtin" else SYNSETS
    val = open_imageset("imagenet", tmp_path, "val")
    assert val.classes == full and len(full) == (1000 if labels == "builtin" else 3)
    assert sorted({r.label for r in val.records}) == [full.index("n01443537"), full.index("n02102040")]
    if labels != "devkit":
        write_file(tmp_path / "val" / "n99999999" / val_name(7), jpeg_bytes("x"))
        with pytest.raises(DatasetLayoutError, match=f"n99999999 is not among the {len(full)} "):
            open_imageset("imagenet", tmp_path, "val")


def test_imagenet_flat_train_says_class_folders_are_missing(tmp_path: Path) -> None:
    write_file(tmp_path / "train" / "n01440764_1.JPEG", jpeg_bytes("a"))
    with pytest.raises(DatasetLayoutError, match="holds images but no class folders") as e:
        open_imageset("imagenet", tmp_path, "train")
    assert str(tmp_path / "train") in str(e.value)


def test_imagenet_val_synset_missing_from_train_is_an_error(tmp_path: Path) -> None:
    write_imagenet_train(tmp_path, synsets=SYNSETS[:2])
    write_imagenet_val(tmp_path, VAL_SYNSETS, layout="folders")
    with pytest.raises(DatasetLayoutError, match="n02102040 is not among the 2 train synsets"):
        open_imageset("imagenet", tmp_path, "val")


def test_imagenet_flat_val_needs_the_devkit(tmp_path: Path) -> None:
    write_imagenet_val(tmp_path, VAL_SYNSETS, layout="flat")
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="validation_ground_truth.*LOC_val_solution.csv") as e:
        open_imageset("imagenet", tmp_path, "val")
    assert str(tmp_path) in str(e.value)


def test_imagenet_flat_val_beyond_ground_truth_is_an_error(tmp_path: Path) -> None:
    write_imagenet_val(tmp_path, VAL_SYNSETS, layout="flat")
    write_file(tmp_path / "val" / val_name(99), jpeg_bytes("extra"))
    with pytest.raises(DatasetLayoutError, match=val_name(99)):
        open_imageset("imagenet", tmp_path, "val")


def test_imagenet_kaggle_layout(tmp_path: Path) -> None:
    root = write_imagenet_kaggle(tmp_path, VAL_SYNSETS)
    train, val = open_imageset("imagenet", root, "train"), open_imageset("imagenet", root, "val")
    assert train.classes == val.classes == SYNSETS
    assert len(train) == 3 * len(SYNSETS)
    assert {r.image_id: r.label for r in val.records} == _expected_val()
    assert val.class_names == [IMAGENET_SYNSETS[w] for w in SYNSETS]
    (root / "LOC_val_solution.csv").write_text("ImageId;PredictionString\nILSVRC2012_val_00000001;n01440764\n")
    with pytest.raises(DatasetLayoutError, match="LOC_val_solution.csv: expected 'ImageId,PredictionString'"):
        open_imageset("imagenet", root, "val")


def test_imagenet_names_from_loc_synset_mapping(tmp_path: Path) -> None:
    renamed = {
        w: f"{words} (Kaggle)" for w, words in IMAGENET_SYNSETS.items()
    }  # the mapping wins over the built-in table
    write_loc_synset_mapping(write_imagenet_train(tmp_path), renamed)
    assert open_imageset("imagenet", tmp_path).class_names == [renamed[w] for w in SYNSETS]


def test_imagenet_names_without_devkit_or_mapping(tmp_path: Path) -> None:
    # Imagenette-like: the built-in table names the ILSVRC-2012 synsets; a synset outside it keeps its id.
    write_imagenet_train(tmp_path, synsets=("n03425413", "n99999999"))
    names = open_imageset("imagenet", tmp_path).class_names
    assert names == ["gas pump, gasoline pump, petrol pump, island dispenser", "n99999999"]


# ---------------------------------------------------------------- tar access


def test_iter_bytes_keeps_order_across_tars_and_files(tmp_path: Path) -> None:
    write_imagenet_train(tmp_path / "tar", layout="tar")
    write_imagenet_train(tmp_path / "classtars", layout="class-tars")
    write_imagenet_train(tmp_path / "folders")
    records = [
        r for kind in ("tar", "classtars", "folders") for r in open_imageset("imagenet", tmp_path / kind).records
    ]
    random.Random(0).shuffle(records)
    out = list(iter_bytes(records))
    assert [r for r, _ in out] == records
    assert [data for _, data in out] == [jpeg_bytes(r.image_id) for r in records]


def test_tar_member_errors_name_the_source(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path, layout="tar")
    outer = tmp_path / "ILSVRC2012_img_train.tar"
    missing = f"{outer}::{SYNSETS[0]}.tar::nope.JPEG"
    with pytest.raises(FileNotFoundError, match="nope.JPEG"):
        read_bytes(missing)
    with pytest.raises(FileNotFoundError, match="n09999999.tar"):
        list(iter_bytes([ImageRecord("x", f"{outer}::n09999999.tar::a.JPEG", 0)]))
    assert open_imageset("imagenet", root)  # errors above leave the index usable


def test_truncated_tar_member_is_an_error(tmp_path: Path) -> None:
    data = tar_bytes({"a.JPEG": jpeg_bytes("a"), "b.JPEG": jpeg_bytes("b")})
    path = write_file(tmp_path / "t.tar", data)
    last = tar_members(path)["b.JPEG"]
    path.write_bytes(data[: last.offset + last.size // 2])
    with pytest.raises((OSError, DatasetLayoutError), match="t.tar"):
        read_bytes(f"{path}::b.JPEG")


def test_inner_member_that_is_not_a_tar(tmp_path: Path) -> None:
    write_file(tmp_path / "ILSVRC2012_img_train.tar", tar_bytes({"n01440764.tar": b"\x01" * 2048}))
    with pytest.raises(DatasetLayoutError, match="n01440764.tar: not an uncompressed tar"):
        open_imageset("imagenet", tmp_path)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("long_names", [False, True])
def test_tar_members_agree_with_tarfile(tmp_path: Path, fmt: int, long_names: bool) -> None:
    # Plain headers take the fast scanner; pax and GNU long names fall back to tarfile: same answer either way.
    deep = ("d" * 120 if long_names else "d") + "/x.JPEG"  # ustar: a name prefix; GNU: an 'L' header; pax: 'x'
    files = {"a.JPEG": jpeg_bytes("a"), deep: jpeg_bytes("x"), "é.jpg": b"", "b.JPEG": b"\x01" * 513}
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        folder = tarfile.TarInfo("d/")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, "a.JPEG"
        tar.addfile(link)
    with tarfile.open(path) as tar:
        expected = {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
    assert {n: tuple(m) for n, m in tar_members(path).items()} == expected
    assert sorted(expected) == sorted(files)
    for name, data in files.items():
        assert read_bytes(f"{path}::{name}") == data
    with open(path, "rb") as f:
        fast = _scan_plain(f, 0, path.stat().st_size)
    assert (fast is not None) == (fmt != tarfile.PAX_FORMAT and not (long_names and fmt == tarfile.GNU_FORMAT))


def test_tar_index_sees_a_rewritten_tar(tmp_path: Path) -> None:
    path = write_file(tmp_path / "t.tar", tar_bytes({"a.JPEG": b"old"}))
    assert read_bytes(f"{path}::a.JPEG") == b"old"
    write_file(path, tar_bytes({"z.JPEG": b"0", "a.JPEG": b"newer"}))
    os.utime(path, ns=(1, 1))
    assert read_bytes(f"{path}::a.JPEG") == b"newer"


# ---------------------------------------------------------------- Caltech


@pytest.mark.parametrize("point_at_categories", [False, True])
def test_caltech101(tmp_path: Path, point_at_categories: bool) -> None:
    root = write_caltech101(tmp_path, per_class=2)
    s = open_imageset("caltech101", root / "101_ObjectCategories" if point_at_categories else root)
    assert s.classes == s.class_names == sorted(CALTECH101_CLASSES) == ["Faces", "accordion", "airplanes"]
    assert (s.split, len(s)) == ("all", 2 * len(CALTECH101_CLASSES))
    r = s.records[2]
    assert (r.image_id, r.label, r.class_id) == ("accordion/image_0001", 1, "accordion")
    assert r.source == str(tmp_path.absolute() / "101_ObjectCategories" / "accordion" / "image_0001.jpg")
    with_bg = open_imageset("caltech101", root, include_background=True)
    assert with_bg.classes == sorted([*CALTECH101_CLASSES, "BACKGROUND_Google"])
    assert len(with_bg) == 2 * (len(CALTECH101_CLASSES) + 1)


def test_caltech256(tmp_path: Path) -> None:
    root = write_caltech256(tmp_path, per_class=2)
    s = open_imageset("caltech256", root)
    assert s.classes == list(CALTECH256_CLASSES)
    assert s.class_names == ["ak47", "american-flag", "beer-mug"]
    assert s.records[-1].image_id == "010.beer-mug/010_0002" and s.records[-1].label == 2
    with_clutter = open_imageset("caltech256", root / "256_ObjectCategories", include_background=True)
    assert with_clutter.classes[-1] == "257.clutter" and with_clutter.class_names[-1] == "clutter"


# ---------------------------------------------------------------- PASCAL VOC 2012


@pytest.mark.parametrize("subfolder", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc2012_labels(tmp_path: Path, subfolder: str) -> None:
    root = write_voc2012(tmp_path)
    s = open_imageset("voc2012", root / subfolder, "train")
    assert s.classes == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    by_id = {r.image_id: r for r in s.records}
    assert list(by_id) == sorted(VOC_EXAMPLE["train"])
    two = by_id["2008_000008"]  # horse and person: multi-label, no single label
    assert (two.labels, two.label, two.class_id) == ((VOC_CLASSES.index("horse"), VOC_CLASSES.index("person")), -1, "")
    one = by_id["2008_000015"]
    assert (one.labels, one.label, one.class_id, one.difficult) == ((4,), 4, "bottle", ())
    dog = by_id["2008_000019"]  # the difficult cat is neither a label nor a negative
    assert (dog.labels, dog.label, dog.difficult) == ((VOC_CLASSES.index("dog"),), 11, (VOC_CLASSES.index("cat"),))
    assert read_bytes(two.source) == jpeg_bytes("2008_000008")


def test_voc2012_splits(tmp_path: Path) -> None:
    root = write_voc2012(tmp_path)
    val = open_imageset("voc2012", root, "val")
    assert [(r.image_id, r.labels, r.label, r.difficult) for r in val.records] == [
        ("2008_000002", (19,), 19, ()),
        ("2008_000003", (), -1, (VOC_CLASSES.index("train"),)),
    ]
    trainval = open_imageset("voc2012", root, "trainval")
    assert [r.image_id for r in trainval.records] == sorted([*VOC_EXAMPLE["train"], *VOC_EXAMPLE["val"]])


def test_voc2012_bad_annotations(tmp_path: Path) -> None:
    root = write_voc2012(tmp_path)
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    (root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000015.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="2008_000015.jpg"):
        open_imageset("voc2012", root, "train")
    (main / "dog_val.txt").write_text("2008_000002 yes\n")
    with pytest.raises(DatasetLayoutError, match=r"dog_val.txt:1"):
        open_imageset("voc2012", root, "val")
    (main / "cat_trainval.txt").write_text("2008_000002 -1\n")
    with pytest.raises(DatasetLayoutError, match="cat_trainval.txt: lists other images"):
        open_imageset("voc2012", root, "trainval")


# ---------------------------------------------------------------- generic folders and errors


def test_folder_kind(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("square", "circle"):
            for i in range(n):
                write_file(tmp_path / split / cls / f"{i}.png", png_bytes(f"{split}/{cls}/{i}"))
    s = open_imageset("folder", tmp_path, "val")
    assert (s.classes, len(s), s.records[0].image_id) == (["circle", "square"], 2, "circle/0")
    assert open_imageset("folder", tmp_path / "train").classes == ["circle", "square"]
    with pytest.raises(DatasetLayoutError, match="no test/ folder"):
        open_imageset("folder", tmp_path, "test")


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("make", ["missing", "empty"])
def test_wrong_root_is_one_clear_error(tmp_path: Path, kind: str, make: str) -> None:
    root = tmp_path / "datasets"
    if make == "empty":
        root.mkdir()
    with pytest.raises(DatasetLayoutError) as e:
        open_imageset(kind, root)
    message = str(e.value)
    assert str(root) in message and "Expected layout:" in message


def test_imagenet_error_shows_the_layouts(tmp_path: Path) -> None:
    write_caltech101(tmp_path)  # a real dataset, but not ImageNet
    with pytest.raises(DatasetLayoutError, match="ILSVRC2012_img_train.tar") as e:
        open_imageset("imagenet", tmp_path)
    assert "train/n01440764/n01440764_10026.JPEG" in str(e.value)


def test_unknown_kind_and_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset kind 'cifar'"):
        open_imageset("cifar", tmp_path)
    with pytest.raises(ValueError, match="'test'"):
        open_imageset("imagenet", tmp_path, "test")


def test_empty_tar_member_list_is_an_error(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w"):
        pass
    with pytest.raises(DatasetLayoutError, match="no images"):
        open_imageset("imagenet", tmp_path)


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_imagenette_and_caltech101(shared_data: Path) -> None:
    train = open_imageset("imagenet", shared_data / "imagenette", "train")
    val = open_imageset("imagenet", shared_data / "imagenette", "val")
    assert (len(train), len(val)) == (9469, 3925)
    assert train.classes == val.classes and len(train.classes) == 10 and train.classes[0] == "n01440764"
    assert {r.label for r in val.records} == set(range(10))
    r = val.records[0]
    assert r.source.endswith(f"{r.image_id}.JPEG") and r.class_id == val.classes[r.label]
    assert read_bytes(r.source)[:2] == b"\xff\xd8"
    caltech = open_imageset("caltech101", shared_data / "caltech101")
    assert (len(caltech.classes), len(caltech)) == (101, 5975)
    assert "BACKGROUND_Google" not in caltech.classes
    counts = {c: 0 for c in caltech.classes}
    for rec in caltech.records:
        counts[rec.class_id] += 1
    assert 31 <= min(counts.values()) and max(counts.values()) == 80
