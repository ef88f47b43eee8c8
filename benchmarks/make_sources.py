"""The source sets of the source-size study (issue 16, item 5), as ImageNet-layout folders the pipeline reads.

    PYTHONPATH=. python3 benchmarks/make_sources.py /tmp/zf_sources \
        --imagenette /work/shared/data/imagenette \
        --imagewoof /work/.mirror/thunderInfy+imagewoof/repo --imagewoof-commit 6338aee \
        --mini-imagenet /work/.mirror/Deo0330+split_minidataset/repo --mini-imagenet-commit 557ebca

writes, under OUT (outside the repository: fetched data never goes into it):

    imagenette/             a link to --imagenette (10 classes, 224 px)
    parts/imagewoof/        Imagewoof's train/ and val/ (10 dog classes, 224 px)
    imagenette_imagewoof/   train/<wnid>, val/<wnid>: links to the class folders of both (20 classes)
    mini_imagenet/          mini-ImageNet's train/ and val/ (100 classes, 84 px)
    sources.json            per source: classes, train and val images, px (median shorter side), root

--imagewoof and --mini-imagenet each take a git directory (a clone or a bare mirror: the commit given is
extracted with ``git archive``) or a plain folder holding train/ and val/ (linked as it is). Leave one out
and the sources that need it are not built. Each source is then listed by the pipeline's own ImageNet
reader, and one image per class goes through the sharder at the paper's 256 px: a layout or file the
pipeline would reject fails here, not on the GPU machine. mini-ImageNet's 84 px images come out of that
step upscaled three times, blurred at the scale of layer 1's filters: a confound of the study.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

from zf_pipeline.data import readers, shard_format, shards
from zf_pipeline.data.folders import subfolders
from zf_pipeline.data.records import DatasetLayoutError
from zf_pipeline.io import atomic_path, write_bytes_atomic

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val")
SHARD_SIZE = 256  # the paper's, which the pipeline uses for every source when ZF_IMAGENET_ROOT is set
COMMIT_MARK = ".commit"  # in an extracted folder: the commit it holds, so a re-run with the same one skips it


class SourceError(RuntimeError):
    """A source that cannot be built; the message names what is missing and where."""


def _git(git_dir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, **kwargs)


def git_dir_of(path: Path) -> Path | None:
    """The git directory of a clone (``path/.git``) or a bare repository (``path`` itself); None otherwise."""
    for candidate in (path / ".git", path):
        if (candidate / "HEAD").is_file() and (candidate / "objects").is_dir():
            return candidate
    return None


def extract_commit(git_dir: Path, commit: str, dest: Path) -> Path:
    """``train/`` and ``val/`` of ``commit`` in ``git_dir``, written to ``dest`` (kept when it holds that commit)."""
    found = _git(git_dir, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", text=True)
    if found.returncode != 0:
        raise SourceError(f"{git_dir}: no commit {commit!r}; fetch it (git fetch origin {commit}) or name another")
    sha = found.stdout.strip()
    if (dest / COMMIT_MARK).is_file() and (dest / COMMIT_MARK).read_text().strip() == sha:
        return dest
    if dest.is_symlink():  # an earlier run linked a folder here
        dest.unlink()
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        archive = subprocess.Popen(["git", f"--git-dir={git_dir}", "archive", sha, *SPLITS], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
            tar.extractall(tmp, filter="data")
        if archive.wait() != 0:
            raise SourceError(f"{git_dir}: git archive {sha} {' '.join(SPLITS)} failed: "
                              f"{archive.stderr.read().decode().strip()}")
        (tmp / COMMIT_MARK).write_text(sha + "\n")
    return dest


def link(dest: Path, target: Path) -> Path:
    """``dest`` as a symbolic link to ``target`` (absolute), replacing an earlier link."""
    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        raise SourceError(f"{dest} exists and is not a link: remove it or choose another output folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(target.resolve(), target_is_directory=True)
    return dest


def obtain(name: str, given: Path, commit: str, dest: Path) -> Path:
    """A part's folder holding train/ and val/: ``given`` itself when it has them, else ``commit`` extracted
    from the git directory ``given`` into ``dest``."""
    if not given.exists():
        raise SourceError(f"{name}: {given} does not exist")
    if all((given / split).is_dir() for split in SPLITS):
        return link(dest, given)
    git_dir = git_dir_of(given)
    if git_dir is None:
        raise SourceError(f"{name}: {given} is neither a folder holding {' and '.join(SPLITS)}/ nor a git repository")
    return extract_commit(git_dir, commit, dest)


def combine(parts: dict[str, Path], dest: Path) -> Path:
    """One ImageNet-layout folder whose class folders link to those of ``parts`` (name -> root); the parts'
    synsets must not overlap (a shared one would silently merge two classes' images)."""
    owner: dict[str, str] = {}
    for name, root in parts.items():
        for split in SPLITS:
            if not (root / split).is_dir():
                raise SourceError(f"{name}: {root / split} does not exist")
        overlap = sorted(set(owner) & set(subfolders(root / "train")))
        if overlap:
            raise SourceError(f"{name} and {owner[overlap[0]]} share the synsets {', '.join(overlap)}: "
                              f"{dest.name} needs disjoint classes")
        owner.update(dict.fromkeys(subfolders(root / "train"), name))
    with atomic_path(dest) as tmp:
        for root in parts.values():
            for split in SPLITS:
                for wnid in subfolders(root / split):
                    link(tmp / split / wnid, root / split / wnid)
    return dest


def median_px(images) -> int:
    """The median shorter side of the first image of each class (headers only: nothing is decoded)."""
    first = {}
    for record in images.records:
        first.setdefault(record.label, record.source)
    sides = []
    for source in first.values():
        with Image.open(source) as im:
            sides.append(min(im.size))
    return int(statistics.median(sides))


def check_source(name: str, root: Path) -> dict:
    """List ``root`` with the pipeline's ImageNet reader and shard one image per class at 256 px; the counts."""
    try:
        listed = {split: readers.open_imageset("imagenet", root, split) for split in SPLITS}
    except DatasetLayoutError as error:
        raise SourceError(f"{name}: the pipeline's ImageNet reader rejects {root}: {error}") from error
    train = listed["train"]
    extra = sorted(set(listed["val"].classes) - set(train.classes))
    if extra:
        raise SourceError(f"{name}: val has classes that train lacks: {', '.join(extra[:5])}")
    sample = list({r.label: r for r in train.records}.values())
    with tempfile.TemporaryDirectory() as tmp:
        summary = shards.write_shards(dataclasses.replace(train, records=sample), tmp, size=SHARD_SIZE, workers=1,
                                      progress=False)
        skipped = shard_format.load_skipped(tmp).to_pylist()
        first = next(shard_format.iter_shard(shard_format.shard_paths(tmp)[0]))
        with Image.open(io.BytesIO(first.jpeg)) as im:
            sharded = im.size
    if skipped or sharded != (SHARD_SIZE, SHARD_SIZE):
        raise SourceError(f"{name}: the sharder wrote {summary['images_written']} of {len(sample)} sample images "
                          f"at {sharded}; skipped: {skipped[:3]}")
    return {"classes": len(train.classes), "train": len(train), "val": len(listed["val"]), "px": median_px(train),
            "root": str(root)}


def build(out: Path, imagenette: Path | None, imagewoof: Path | None, imagewoof_commit: str,
          mini_imagenet: Path | None, mini_imagenet_commit: str) -> dict[str, dict]:
    """Build every source whose inputs are given under ``out``; check each; write and return sources.json."""
    if out.resolve().is_relative_to(REPO):
        raise SourceError(f"{out} is inside the repository {REPO}: fetched data stays out of it")
    roots: dict[str, Path] = {}
    if imagenette is not None:
        if not (imagenette / "train").is_dir():
            raise SourceError(f"--imagenette {imagenette}: no train/ folder (expected Imagenette's train/<wnid>/)")
        roots["imagenette"] = link(out / "imagenette", imagenette)
    if imagewoof is not None:
        woof = obtain("imagewoof", imagewoof, imagewoof_commit, out / "parts" / "imagewoof")
        if imagenette is None:
            raise SourceError("imagenette_imagewoof needs --imagenette as well as --imagewoof")
        roots["imagenette_imagewoof"] = combine({"imagenette": imagenette, "imagewoof": woof},
                                                out / "imagenette_imagewoof")
    if mini_imagenet is not None:
        roots["mini_imagenet"] = obtain("mini_imagenet", mini_imagenet, mini_imagenet_commit, out / "mini_imagenet")
    if not roots:
        raise SourceError("no source given: name --imagenette, --imagewoof (with --imagenette) or --mini-imagenet")
    found = {}
    for name, root in roots.items():
        found[name] = check_source(name, root)
        print(f"{name}: {found[name]['classes']} classes, train {found[name]['train']:,}, val {found[name]['val']:,}, "
              f"{found[name]['px']} px  ({root})")
    write_bytes_atomic(out / "sources.json", json.dumps(found, indent=1).encode())
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="where the sources go (outside the repository)")
    parser.add_argument("--imagenette", type=Path, help="Imagenette (train/<wnid>/, val/<wnid>/)")
    parser.add_argument("--imagewoof", type=Path, help="Imagewoof: a git directory or a folder with train/, val/")
    parser.add_argument("--imagewoof-commit", default="6338aee", help="the commit taken from a git directory")
    parser.add_argument("--mini-imagenet", type=Path, help="mini-ImageNet: a git directory or a folder")
    parser.add_argument("--mini-imagenet-commit", default="557ebca", help="the commit taken from a git directory")
    args = parser.parse_args(argv)
    try:
        build(args.out, args.imagenette, args.imagewoof, args.imagewoof_commit, args.mini_imagenet,
              args.mini_imagenet_commit)
    except SourceError as error:
        print(f"make_sources: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
