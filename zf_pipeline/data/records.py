"""One labelled image of a dataset, wherever its bytes live (a file, or a member of nested tars)."""

from __future__ import annotations

import functools
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

# A source inside tars is written 'outer.tar::inner.tar::member.JPEG' (ImageNet's train tar of per-class tars).
TAR_SEP = "::"


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is missing or not laid out as expected; the message names the path and the layout."""


@dataclass(frozen=True)
class ImageRecord:
    """One image: where its bytes are and what it is labelled."""

    image_id: str  # unique and stable within its ImageSet, e.g. 'n01440764/n01440764_10026'
    source: str  # a file path, or 'a.tar::b.tar::member' for a member of (nested) tars
    label: int  # class index (position in ImageSet.classes); -1 when there is no single class
    class_id: str = ""  # synset or class folder name
    labels: tuple[int, ...] = ()  # multi-label targets (PASCAL VOC); empty for single-label sets
    # Classes present only as 'difficult' objects (PASCAL VOC): neither positive nor negative.
    difficult: tuple[int, ...] = ()


@dataclass
class ImageSet:
    """A split of a dataset: its classes in index order and its images."""

    name: str  # 'imagenet', 'caltech101', 'caltech256', 'voc2012', 'demo-source', ...
    root: Path
    split: str  # 'train', 'val', 'all', ...
    classes: list[str]  # class ids (synsets, folder names) in index order
    class_names: list[str]  # human-readable names, same order
    records: list[ImageRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def tar_source(path: str | os.PathLike, *members: str) -> str:
    """The source string of a member of (nested) tars: ``tar_source('a.tar', 'b.tar', 'x.JPEG')``."""
    return TAR_SEP.join([os.fspath(path), *members])


def split_source(source: str) -> tuple[str, tuple[str, ...]]:
    """``'a.tar::b.tar::x.JPEG'`` -> ``('a.tar', ('b.tar', 'x.JPEG'))``; a plain file path has no members."""
    path, *members = source.split(TAR_SEP)
    return path, tuple(members)


class TarMember(NamedTuple):
    """Where a member's bytes lie in the outermost tar file."""

    offset: int
    size: int


class _Window(io.RawIOBase):
    """A read-only view of bytes [start, start + size) of a file, so that tarfile parses a nested tar in place."""

    def __init__(self, f: BinaryIO, start: int, size: int) -> None:
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.cache
def _tar_index(path: str, chain: tuple[str, ...], stamp: tuple[int, int]) -> dict[str, TarMember]:
    # Cached per process and keyed by the file's size and mtime: a worker that reads many chunks of the
    # same ImageNet tar parses each (nested) tar's headers once, then reads members with one seek each.
    start, size = 0, stamp[0]
    if chain:
        parent = _tar_index(path, chain[:-1], stamp)
        if chain[-1] not in parent:
            raise FileNotFoundError(f"{tar_source(path, *chain[:-1])}: no member {chain[-1]!r}")
        start, size = parent[chain[-1]]
    with open(path, "rb") as f:
        members = _scan_plain(f, start, size)
        if members is not None:
            return members
        try:
            with tarfile.open(fileobj=_Window(f, start, size), mode="r:") as tar:
                return {m.name: TarMember(start + m.offset_data, m.size) for m in tar if m.isfile()}
        except tarfile.ReadError as e:
            where = tar_source(path, *chain)
            raise DatasetLayoutError(f"{where}: not an uncompressed tar archive ({e})") from e


_BLOCK = 512
_PLAIN_TYPES = {b"0": True, b"\0": True, b"7": True, b"1": False, b"2": False, b"5": False}  # type -> regular file?


def _octal(field: bytes) -> int:
    """A tar header's octal number; ValueError for anything else (base-256 sizes, garbage)."""
    digits = field.split(b"\0", 1)[0].strip()
    if not digits or digits.strip(b"01234567"):
        raise ValueError(field)
    return int(digits, 8)


def _scan_plain(f: BinaryIO, start: int, size: int) -> dict[str, TarMember] | None:
    """Members of a tar of plain ustar/GNU headers (all ImageNet has), about 5x faster than tarfile.

    None on anything else (pax or GNU long-name headers, sparse files, a bad checksum, a short
    header): tarfile then parses the archive, or says why it is not one.
    """
    members, pos = {}, 0
    while pos + _BLOCK <= size:
        f.seek(start + pos)
        header = f.read(_BLOCK)
        if len(header) < _BLOCK:
            return None
        if not any(header):  # end-of-archive block
            break
        kind = header[156:157]
        try:
            checksum, length = _octal(header[148:156]), _octal(header[124:136])
        except ValueError:
            return None
        if checksum != sum(header) - sum(header[148:156]) + 8 * 32 or kind not in _PLAIN_TYPES:
            return None
        name = header[:100].split(b"\0", 1)[0]
        if header[257:265] == b"ustar\x0000" and header[345]:  # POSIX ustar: a name prefix
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        pos += _BLOCK
        if _PLAIN_TYPES[kind]:
            if not name.endswith(b"/"):
                members[name.decode("utf-8", "surrogateescape")] = TarMember(start + pos, length)
            pos += -(-length // _BLOCK) * _BLOCK  # data padded to whole blocks
    return members


def tar_members(path: str | os.PathLike, *chain: str) -> dict[str, TarMember]:
    """The regular-file members of a tar, or of a tar nested in it (``chain`` names the nesting), by name.

    Only uncompressed tars (as ImageNet ships them): members are read in place by offset.
    """
    path = os.fspath(path)
    return _tar_index(path, tuple(chain), _stamp(path))


def _read_member(f: BinaryIO, source: str, member: TarMember) -> bytes:
    f.seek(member.offset)
    data = f.read(member.size)
    if len(data) != member.size:
        raise OSError(f"{source}: truncated tar member ({len(data)} of {member.size} bytes)")
    return data


def _locate(source: str) -> tuple[str, TarMember]:
    path, members = split_source(source)
    index = tar_members(path, *members[:-1])
    if members[-1] not in index:
        raise FileNotFoundError(f"{source}: no member {members[-1]!r} in {tar_source(path, *members[:-1])}")
    return path, index[members[-1]]


def read_bytes(source: str) -> bytes:
    """The raw bytes of one image source: a file path, or a member of (nested) tars."""
    if TAR_SEP not in source:
        return Path(source).read_bytes()
    path, member = _locate(source)
    with open(path, "rb") as f:
        return _read_member(f, source, member)


def iter_bytes(records: Iterable[ImageRecord]) -> Iterator[tuple[ImageRecord, bytes]]:
    """Each record with its raw bytes, in the order given.

    Each tar file is opened once per call and each (nested) tar's headers are parsed once per
    process, so a worker streaming a chunk of a shuffled ImageNet tar pays one seek per image.
    """
    with ExitStack() as stack:
        handles: dict[str, BinaryIO] = {}
        for record in records:
            if TAR_SEP not in record.source:
                yield record, Path(record.source).read_bytes()
                continue
            path, member = _locate(record.source)
            if path not in handles:
                handles[path] = stack.enter_context(open(path, "rb"))
            yield record, _read_member(handles[path], record.source, member)
