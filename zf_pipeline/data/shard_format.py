"""The shard format: what a finished split folder holds, and how to read it back (written by ``shards.py``).

A finished split folder holds (the format contract the training and feature code read):

- ``<split>-NNNNNN.tar``: shards; a sample's ``__key__`` is its 9-digit position in the split's order (train
  shuffled by ``seed``, other splits sorted by image_id) with members ``<key>.cls`` (class index, -1 if none),
  ``<key>.jpg`` (the RGB center crop) and ``<key>.json`` (image_id, label, class_id, source, labels).
  Shard i holds positions [i * images_per_shard, (i + 1) * images_per_shard); a skipped image leaves a gap,
  so every shard depends on its own images only (parallel, resumable, reproducible).
- ``manifest.parquet`` (one row per written image), ``skipped.parquet`` (one row per unusable input, with
  its reason), ``classes.json``, ``config.json`` (what the shards were made with; written first), and
  ``summary.json``, written last: its presence means the folder is complete.

Shards are byte-identical for the same inputs and config whatever the number of workers: tar headers carry
no time, owner or host, members are in sorted order and the JPEG encoder settings are fixed.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

KEY_DIGITS = 9
FORMAT_VERSION = 1

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("key", pa.string()),
        ("label", pa.int32()),
        ("class_id", pa.string()),
    ]
)
SKIPPED_SCHEMA = pa.schema([("image_id", pa.string()), ("source", pa.string()), ("reason", pa.string())])


class ShardFormatError(ValueError):
    """A shard folder or file does not follow the shard format contract; the message names the file."""


class IncompleteShards(ShardFormatError, FileNotFoundError):
    """A shard folder without summary.json: never finished (or not a shard folder at all)."""


@dataclass(frozen=True)
class Sample:
    """One sample read back from a shard."""

    key: str
    jpeg: bytes
    label: int
    meta: dict


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: '<split>-NNNNNN.tar'."""
    return f"{split}-{index:06d}.tar"


def load_summary(shard_dir: str | os.PathLike) -> dict:
    """summary.json of a finished shard folder; raises :class:`IncompleteShards` when it is not finished."""
    path = Path(shard_dir) / "summary.json"
    if not path.exists():
        raise IncompleteShards(
            f"{path} not found: {shard_dir} is not a finished shard folder (write_shards writes it last)"
        )
    return json.loads(path.read_text())


def shard_paths(shard_dir: str | os.PathLike) -> list[Path]:
    """The shard files of a finished folder, in order (pass them, as strings, to ``webdataset.WebDataset``)."""
    return [Path(shard_dir) / name for name in load_summary(shard_dir)["shards"]]


def load_manifest(shard_dir: str | os.PathLike) -> pa.Table:
    """One row per written image: image_id, source, split, shard, key, label (int32), class_id."""
    load_summary(shard_dir)
    return pq.read_table(Path(shard_dir) / "manifest.parquet")


def load_skipped(shard_dir: str | os.PathLike) -> pa.Table:
    """One row per unusable input image: image_id, source, reason."""
    load_summary(shard_dir)
    return pq.read_table(Path(shard_dir) / "skipped.parquet")


def load_classes(shard_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(class ids in index order, their human-readable names)."""
    classes = json.loads((Path(shard_dir) / "classes.json").read_text(encoding="utf-8"))
    return classes["classes"], classes["class_names"]


def iter_shard(path: str | os.PathLike) -> Iterator[Sample]:
    """The samples of one shard, in order, in one sequential read of the file (no webdataset needed)."""
    members: dict[str, bytes] = {}
    key = None
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, _, extension = member.name.partition(".")
                if key is not None and member_key != key:
                    yield _sample(path, key, members)
                    members = {}
                key = member_key
                members[extension] = tar.extractfile(member).read()
    except tarfile.TarError as error:
        raise ShardFormatError(f"{path}: not a readable tar shard: {error}") from error
    if key is not None:
        yield _sample(path, key, members)


def _sample(path: str | os.PathLike, key: str, members: dict[str, bytes]) -> Sample:
    if set(members) != {"cls", "jpg", "json"}:
        raise ShardFormatError(f"{path}: sample {key} has members {sorted(members)}, expected cls, jpg, json")
    return Sample(key=key, jpeg=members["jpg"], label=int(members["cls"]), meta=json.loads(members["json"]))
