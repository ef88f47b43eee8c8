"""Content-addressed caching for heavy assets.

Each heavy asset writes into ``<output_root>/<stage>/<fingerprint>/`` where the fingerprint hashes
the stage's code version (the source of the library modules it runs), its config and the
fingerprints of its upstream assets. A folder holding ``_asset.json`` is complete: a second
materialization with nothing changed reads that file and returns at once. The library writes
its own outputs atomically and resumably, so a killed stage restarts where it stopped.

A folder is built under an exclusive lock (an flock the OS drops when its holder dies): a second
run over the same output root waits for it, then reuses it. Paths inside the output root are
stored relative to it (``${ZF_OUTPUT_ROOT}/...``), so a moved or copied root resolves to itself.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from zf_pipeline.io import folder_lock, remove_temporaries, write_bytes_atomic

DONE = "_asset.json"
ROOT = "${ZF_OUTPUT_ROOT}"


def code_version(*modules: ModuleType) -> str:
    """A short hash of the source text of ``modules``: changes whenever their code changes."""
    h = hashlib.sha256()
    for module in modules:
        h.update(module.__name__.encode())
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:12]


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts (config dicts, upstream fingerprints, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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


def cached_stage(
    root: Path,
    stage: str,
    key: list[Any],
    build: Callable[[Path], dict[str, Any]],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``build(out_dir)`` unless the same stage with the same key already completed.

    ``build`` returns a JSON-serialisable summary; the returned record adds ``path``,
    ``fingerprint``, ``cached`` (whether this call was a cache hit) and ``seconds``.
    """
    fp = fingerprint(stage, *key)
    out = Path(root).resolve() / stage / fp
    done = out / DONE
    if not done.exists():
        with folder_lock(out, waiting=lambda pid: log(f"{stage}: waiting for {out}, being built by pid {pid}")):
            if not done.exists():  # else another run built it while this one waited
                for stale in remove_temporaries(out):
                    log(f"{stage}: removed {stale.name}, left by a killed build")
                log(f"{stage}: building {out}")
                t0 = time.perf_counter()
                summary = build(out)
                record = {**summary, "path": str(out), "fingerprint": fp, "seconds": round(time.perf_counter() - t0, 3)}
                write_record(done, record, root)
                return {**record, "cached": False}
    log(f"{stage}: cache hit {out}")
    return {**read_record(done, root), "cached": True}
