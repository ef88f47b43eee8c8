"""Atomic file output (no partial result is ever visible under its final name), and the JSON records of
what each pipeline step produced, their paths relative to the output root."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow


TMP_MARK = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    # Same directory, so the final rename stays on one filesystem and is atomic.
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of :func:`atomic_path` under ``folder`` (left there by killed writers); return them.

    Only safe while no live process writes under ``folder``: call it holding :func:`folder_lock`.
    """
    stale = sorted(Path(folder).rglob(f".*{TMP_MARK}*"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    return stale


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for a file or a directory written at the yielded path. On error the temporary is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        if final.is_dir() and tmp.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def folder_lock(folder: str | os.PathLike, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file) for the block; waits for another holder.

    An flock: the OS releases it when the holding process dies, even by ``kill -9``, so a crash never
    leaves a folder locked. The holder's pid is written in the file; when the lock is taken,
    ``waiting(pid)`` is called once before the wait, which a signal (Ctrl-C, SIGTERM) interrupts.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                f.seek(0)
                waiting(f.read().decode(errors="replace").strip() or "?")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.truncate(0)
            f.write(str(os.getpid()).encode())
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_table(table: "pyarrow.Table", stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<stem>.parquet`` and ``<stem>.csv`` atomically; list columns are left out of the CSV."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    stem = Path(stem)
    parquet, csv = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    with atomic_path(parquet) as tmp:
        pq.write_table(table, tmp)
    flat = table.select([f.name for f in table.schema if not pa.types.is_list(f.type)])
    with atomic_path(csv) as tmp:
        pacsv.write_csv(flat, tmp)
    return parquet, csv


# Paths inside the output root are stored as ${ZF_OUTPUT_ROOT}/...: a moved or copied root resolves to itself.
ROOT = "${ZF_OUTPUT_ROOT}"


def root_relative(obj: Any, root: str | os.PathLike) -> Any:
    """``obj`` (JSON-like) with every path inside the output ``root`` written as ``${ZF_OUTPUT_ROOT}/<relative>``."""
    if isinstance(obj, os.PathLike):
        obj = os.fspath(obj)
    if isinstance(obj, str):
        prefix = str(Path(root).resolve())
        return ROOT + obj[len(prefix):] if obj == prefix or obj.startswith(prefix + os.sep) else obj
    if isinstance(obj, dict):
        return {k: root_relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [root_relative(v, root) for v in obj]
    return obj


def resolve_root(obj: Any, root: str | os.PathLike) -> Any:
    """The inverse of :func:`root_relative`: ``${ZF_OUTPUT_ROOT}`` becomes the current output ``root``."""
    if isinstance(obj, str):
        return str(Path(root).resolve()) + obj[len(ROOT):] if obj.startswith(ROOT) else obj
    if isinstance(obj, dict):
        return {k: resolve_root(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve_root(v, root) for v in obj]
    return obj


def write_record(path: Path, record: Any, root: str | os.PathLike) -> None:
    """Write a JSON record atomically, its paths relative to the output ``root``."""
    write_bytes_atomic(path, json.dumps(root_relative(record, root), indent=2, default=str).encode())


def read_record(path: Path, root: str | os.PathLike) -> Any:
    """A record written by :func:`write_record`, its paths resolved against the current output ``root``."""
    return resolve_root(json.loads(path.read_text()), root)
