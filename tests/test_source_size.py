"""The source-size study's tooling: benchmarks/make_sources.py on mirror-like fixture layouts, and
benchmarks/source_size.py on records written as the assets write them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from layouts import jpeg_bytes, write_file

from zf_pipeline import tables
from zf_pipeline.io import write_record
from zf_pipeline.transfer.protocol import RUN_SCHEMA

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_sources, source_size = _script("make_sources"), _script("source_size")


def write_source(root: Path, synsets: list[str], side: int, suffix: str = ".JPEG") -> Path:
    """An ImageNet-layout folder of side x side JPEGs: 3 train and 2 val images per synset."""
    for wnid in synsets:
        for split, count in (("train", 3), ("val", 2)):
            for n in range(count):
                name = f"{wnid}_{split}{n}"
                write_file(root / split / wnid / f"{name}{suffix}", jpeg_bytes(name, (side, side)))
    return root


def git_mirror(tmp_path: Path, tree: Path) -> tuple[Path, str]:
    """A bare repository holding ``tree`` (plus a README) in one commit, as the fetched mirrors are; its sha."""
    work = tmp_path / "clone"
    shutil.copytree(tree, work)
    (work / "README.md").write_text("not a split\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(work)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "images"]):
        subprocess.run(git + args, check=True)
    sha = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp_path / "mirror")], check=True)
    return tmp_path / "mirror", sha


def test_sources_from_folders_and_a_git_mirror(tmp_path):
    """Imagenette and Imagewoof as plain folders, mini-ImageNet (.jpg, 84 px) from a bare git mirror: three sources
    the pipeline's reader lists, the combined one with both parts' classes, px as measured."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    nette = write_source(tmp_path / "imagenette", ["n01440764", "n02102040"], 32)
    woof = write_source(tmp_path / "imagewoof", ["n02086240", "n02087394", "n02088364"], 32)
    mirror, sha = git_mirror(tmp_path, write_source(tmp_path / "mini_tree", ["n01532829", "n01558993"], 84, ".jpg"))
    out = tmp_path / "sources"

    found = make_sources.build(out, nette, woof, "unused", mirror, sha[:7])

    assert found["imagenette"] == {"classes": 2, "train": 6, "val": 4, "px": 32, "root": str(out / "imagenette")}
    assert (found["imagenette_imagewoof"]["classes"], found["imagenette_imagewoof"]["train"]) == (5, 15)
    mini = found["mini_imagenet"]
    assert (mini["classes"], mini["val"], mini["px"]) == (2, 4, 84)
    assert json.loads((out / "sources.json").read_text()) == found
    assert (out / "imagenette").resolve() == nette.resolve()
    assert (out / "imagenette_imagewoof" / "val" / "n02086240").resolve() == (woof / "val" / "n02086240").resolve()
    assert not (out / "mini_imagenet" / "README.md").exists()  # only train/ and val/ come out of the mirror
    # A second run keeps the extracted commit and the links.
    assert make_sources.build(out, nette, woof, "unused", mirror, sha) == found


def test_overlapping_synsets_fail_and_build_nothing(tmp_path):
    nette = write_source(tmp_path / "imagenette", ["n01440764", "n02102040"], 16)
    woof = write_source(tmp_path / "imagewoof", ["n02102040", "n02086240"], 16)
    with pytest.raises(make_sources.SourceError, match="share the synsets n02102040"):
        make_sources.build(tmp_path / "out", nette, woof, "unused", None, "unused")
    assert not (tmp_path / "out" / "imagenette_imagewoof").exists()


def test_missing_inputs_are_named(tmp_path, capsys):
    nette = write_source(tmp_path / "imagenette", ["n01440764"], 16)
    assert make_sources.main([str(tmp_path / "out"), "--imagenette", str(nette), "--mini-imagenet",
                              str(tmp_path / "nowhere")]) == 1
    assert f"mini_imagenet: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    if shutil.which("git"):
        mirror, _ = git_mirror(tmp_path, nette)
        with pytest.raises(make_sources.SourceError, match="no commit 'deadbeef'"):
            make_sources.build(tmp_path / "out", None, None, "", mirror, "deadbeef")
    with pytest.raises(make_sources.SourceError, match="inside the repository"):
        make_sources.build(REPO / "outputs" / "sources", nette, None, "", None, "")


# ---------------------------------------------------------------- the report


def runs(method: str, classifier: str, layer: str, accuracies: list[float], n_train: int = 30) -> list[dict]:
    return [dict(method=method, layer=layer, classifier=classifier, n_train=n_train, split_index=i, n_train_images=30,
                 n_test_images=50, accuracy=a, per_class_accuracy=[a], c=1.0, cv_accuracy=a, converged=True)
            for i, a in enumerate(accuracies)]


def write_table7(root: Path, base: float) -> None:
    """Table 7 published and recorded as the table7 asset leaves it: layer i's two splits at base + i and + i + 2."""
    table7_runs = [row for i, (classifier, layer) in enumerate(tables.PAPER_TABLE7)
                   for row in runs("pretrained", classifier, layer, [base + i, base + i + 2])]
    table7_runs += runs("pretrained", "svm", "conv1", [1.0, 1.0], n_train=60)  # Caltech-256's column: not read
    table, md = tables.table7({"caltech101": pa.Table.from_pylist(table7_runs, schema=RUN_SCHEMA)})
    write_record(root / "_records" / "table7.json", tables.publish(table, md, root / "table7", "table7"), root)


def write_run(root: Path, classes: int, base: float, scratch: list[float] | None, table7: bool = True) -> Path:
    """An output root as the assets leave it: the published tables 4 and 7 (Table 7 only with ``table7``), their
    records, the training run's result.json and the train shards' record (paths stored relative to the root)."""
    if table7:
        write_table7(root, base)
    table4_runs = runs("pretrained", "softmax", "fc7", [base, base + 4]) + runs("pretrained", "softmax", "fc7", [5.0],
                                                                                n_train=15)
    table4_runs += runs("non-pretrained", "softmax", "fc8", scratch or [])
    table, md = tables.table4(pa.Table.from_pylist(table4_runs, schema=RUN_SCHEMA))
    write_record(root / "_records" / "table4.json", tables.publish(table, md, root / "table4", "table4"), root)
    run_dir = root / "train" / "f00"
    write_file(run_dir / "result.json", json.dumps({"images_train": 100 * classes, "images_val": 10 * classes,
                                                    "conv1_hf_median": 0.5, "val_10crop_top1_err": 20.0,
                                                    "val_center_top1_err": 21.0}).encode())
    write_record(root / "_records" / "zfnet_model.json", {"path": str(run_dir), "checkpoint": str(run_dir / "x.pt")},
                 root)
    write_record(root / "_records" / "imagenet_train_shards.json", {"path": str(root / "s"), "classes": classes}, root)
    return root


def test_report_reads_each_roots_records_and_shares_the_scratch_row(tmp_path):
    small = write_run(tmp_path / "small", 10, 40.0, [50.0, 52.0])
    large = write_run(tmp_path / "large", 100, 60.0, None)  # run with source_size_no_scratch.yaml
    moved = tmp_path / "moved_large"
    large.rename(moved)  # records hold root-relative paths: a root brought back elsewhere still reads
    (tmp_path / "sources.json").write_text(json.dumps({"small": {"px": 224}, "large": {"px": 84}}))
    out = tmp_path / "results"

    assert source_size.main([f"small={small}", f"large={moved}", "--sources", str(tmp_path / "sources.json"),
                             "--out", str(out)]) == 0

    study = json.loads((out / "source_size.json").read_text())
    first = study["small"]
    assert (first["classes"], first["images"], first["images_train"], first["px"]) == (10, 1100, 1000, 224)
    assert list(first["table7"]) == [f"{c}_{layer}" for c, layer in tables.PAPER_TABLE7]
    assert first["table7"]["svm_conv1"] == 41.0 and first["table7"]["softmax_fc7"] == 48.0  # means over the splits
    assert first["table7_std"]["svm_conv1"] == 1.0
    assert first["table4_30"] == {"pretrained": 42.0, "scratch": 51.0} and first["scratch_from"] == "small"
    assert study["large"]["table4_30"] == {"pretrained": 62.0, "scratch": 51.0}
    assert study["large"]["scratch_from"] == "small" and study["large"]["px"] == 84
    assert (first["conv1_hf_median"], first["source_val_top1_err"]) == (0.5, 20.0)
    assert (out / "source_size_layers.png").stat().st_size > 0 and (out / "source_size_classes.png").stat().st_size > 0


def test_report_keeps_a_source_whose_table7_has_not_run(tmp_path, capsys):
    """A hold cut short leaves a source with its network and Table 4 but no Table 7: it is reported with what it has
    and names what it lacks; the plots still draw."""
    done = write_run(tmp_path / "done", 20, 40.0, [50.0, 52.0])
    cut = write_run(tmp_path / "cut", 10, 30.0, None, table7=False)
    out = tmp_path / "results"

    assert source_size.main([f"done={done}", f"cut={cut}", "--out", str(out)]) == 0

    study = json.loads((out / "source_size.json").read_text())
    assert study["cut"]["missing"] == ["table7"] and study["cut"]["table7"] == {}
    assert study["cut"]["table4_30"] == {"pretrained": 32.0, "scratch": 51.0}
    assert study["done"]["missing"] == [] and study["done"]["table7"]["svm_conv1"] == 41.0
    cut_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cut:"))
    assert cut_line.endswith("not materialized yet: table7")
    assert (out / "source_size_layers.png").stat().st_size > 0


def test_report_keeps_what_it_read_and_redraws_from_the_copy(tmp_path):
    """--keep copies each source's records, tables (Table 1 too, with every network's result.json), result.json and
    the shown layers' figures; the checkpoints and the other layers stay behind, and the copy alone gives the same
    report (a hold's machine and its outputs are gone after the session)."""
    run = write_run(tmp_path / "run", 20, 40.0, [50.0, 52.0])
    write_file(run / "train" / "f00" / "last.pt", b"a checkpoint")
    pngs = {layer: run / "fig8" / "h" / f"fig8_{layer}.png" for layer in ("conv1", "conv3")}
    for png in pngs.values():
        write_file(png, b"png")
    write_record(run / "_records" / "fig8.json", {"pngs": {layer: str(png) for layer, png in pngs.items()}}, run)
    write_file(run / "table1" / "table1.parquet", b"parquet")  # item 6's table, read by no one here but kept
    write_file(run / "table1" / "table1.md", b"| Table 1 |")
    write_record(run / "_records" / "table1.json", {"path": str(run / "table1" / "table1.parquet")}, run)
    write_file(run / "train" / "f01" / "result.json", b"{}")  # a network of Table 2, whose ensemble was cut short
    write_file(run / "train" / "f01" / "metrics.jsonl", b'{"epoch": 1}\n')
    kept = tmp_path / "kept"
    assert source_size.main([f"src={run}", "--out", str(tmp_path / "a"), "--keep", str(kept)]) == 0
    assert (kept / "src" / "_records" / "table7.json").is_file() and (kept / "src" / "table7" / "table7.md").is_file()
    assert (kept / "src" / "fig8" / "h" / "fig8_conv1.png").read_bytes() == b"png"
    assert not (kept / "src" / "fig8" / "h" / "fig8_conv3.png").exists()
    assert (kept / "src" / "table1" / "table1.md").read_bytes() == b"| Table 1 |"
    assert not (kept / "src" / "train" / "f00" / "last.pt").exists()
    assert (kept / "src" / "train" / "f01" / "result.json").read_bytes() == b"{}"
    assert (kept / "src" / "train" / "f01" / "metrics.jsonl").read_bytes() == b'{"epoch": 1}\n'
    shutil.rmtree(run)

    assert source_size.main([f"src={kept / 'src'}", "--out", str(tmp_path / "b"), "--keep", str(kept)]) == 0
    assert (tmp_path / "a" / "source_size.json").read_text() == (tmp_path / "b" / "source_size.json").read_text()


def test_report_names_a_missing_record(tmp_path, capsys):
    root = tmp_path / "run"
    (root / "_records").mkdir(parents=True)
    assert source_size.main([f"x={root}", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "_records/zfnet_model.json does not exist" in err and "materialize" in err
    assert source_size.main(["no-equals-sign", "--out", str(tmp_path / "out")]) == 1


def test_keep_only_copies_a_tables_hold_and_writes_no_study(tmp_path):
    """A hold of Tables 1 and 2 (source_size.sh report_tables) keeps its runs apart and leaves the study alone."""
    run = write_run(tmp_path / "run", 20, 40.0, [50.0, 52.0])
    out, kept = tmp_path / "out", tmp_path / "kept"
    assert source_size.main([f"src={run}", "--out", str(out), "--keep", str(kept), "--keep-only"]) == 0
    assert (kept / "src" / "_records" / "zfnet_model.json").is_file()
    assert not (out / "source_size.json").exists() and not (out / "source_size_layers.png").exists()
    with pytest.raises(SystemExit):
        source_size.main([f"src={run}", "--out", str(out), "--keep-only"])

    only_table1 = tmp_path / "only_table1"  # the two-hold fallback's first hold: Table 1, no zfnet_model yet
    write_file(only_table1 / "table1" / "table1.md", b"| Table 1 |")
    write_file(only_table1 / "table1" / "table1.parquet", b"parquet")
    write_record(only_table1 / "_records" / "table1.json", {"path": str(only_table1 / "table1" / "table1.parquet")},
                 only_table1)
    assert source_size.main([f"t1={only_table1}", "--out", str(out), "--keep", str(kept), "--keep-only"]) == 0
    assert (kept / "t1" / "table1" / "table1.md").read_bytes() == b"| Table 1 |"


def _hold_archive(root: Path, name: str, archive: Path) -> Path:
    """A hold's archive as source_size.sh pack leaves it: the output root's files under ``name/``."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "czf", str(archive), "--transform", f"s#^\\.#{name}#", "-C", str(root), "."], check=True)
    return archive


def test_report_tables_adds_a_later_holds_table_to_what_an_earlier_hold_kept(tmp_path):
    """Table 1 from one hold, Table 2 from the next: the second report keeps both, and its records win."""
    first = write_run(tmp_path / "first", 20, 40.0, None, table7=False)
    write_file(first / "table1" / "table1.parquet", b"parquet")
    write_file(first / "table1" / "table1.md", b"| Table 1 |")
    write_record(first / "_records" / "table1.json", {"path": str(first / "table1" / "table1.parquet")}, first)
    second = write_run(tmp_path / "second", 20, 40.0, None, table7=False)
    write_file(second / "table2" / "table2.parquet", b"parquet")
    write_file(second / "table2" / "table2.md", b"| Table 2 |")
    write_record(second / "_records" / "table2.json", {"path": str(second / "table2" / "table2.parquet")}, second)
    write_file(second / "train" / "f00" / "result.json", b'{"second": true}')
    # the first hold's network, whose record the second's replaces, keeps its curve
    write_file(first / "train" / "e00" / "result.json", b'{"first": true}')
    write_file(first / "train" / "e00" / "learning_curve.png", b"png")
    results = tmp_path / "results"

    def report(root: Path, hold: str) -> None:
        _hold_archive(root, "imagenette_imagewoof", tmp_path / hold / "hold_x.tar.gz")
        subprocess.run(["bash", "benchmarks/source_size.sh", "report_tables", str(tmp_path / hold)], cwd=REPO,
                       check=True, env={**os.environ, "RESULTS": str(results), "VENV_PYTHON": sys.executable})

    report(first, "hold1")
    report(second, "hold2")
    kept = results / "source_size" / "tables" / "imagenette_imagewoof"
    assert (kept / "table1" / "table1.md").read_bytes() == b"| Table 1 |"
    assert (kept / "table2" / "table2.md").read_bytes() == b"| Table 2 |"
    assert json.loads((kept / "train" / "f00" / "result.json").read_text()) == {"second": True}
    assert (kept / "train" / "e00" / "learning_curve.png").read_bytes() == b"png"


def test_a_bare_machine_is_named_by_the_calls_after_staging(tmp_path):
    """A device machine taken back mid-hold comes back bare: a later call says what is missing, naming the fix."""
    env = {**os.environ, "STUDY": str(tmp_path / "zf"), "OUT": str(tmp_path / "out")}
    for args, expected in ((["run", "imagenette_imagewoof", "*table2"],
                            f"no source {tmp_path}/zf/sources/imagenette_imagewoof (run 'sources' first)"),
                           (["pack", "hold_x"], f"no {tmp_path}/zf/out on this machine: nothing has run here")):
        done = subprocess.run(["bash", "benchmarks/source_size.sh", *args], cwd=REPO, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 1 and expected in done.stderr, done.stderr
    assert not (tmp_path / "out" / "hold_x.tar.gz").exists()
