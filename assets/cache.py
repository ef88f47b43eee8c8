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
import importlib
import inspect
import json
import pkgutil
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from zf_pipeline.io import folder_lock, read_record, remove_temporaries, write_record

DONE = "_asset.json"


def code_version(*modules: ModuleType) -> str:
    """A short hash of the source text of ``modules``: changes whenever their code changes. A package counts
    with every module in it (``zf_pipeline.render``: each figure's module)."""
    h = hashlib.sha256()
    for module in modules:
        parts = [module]
        if hasattr(module, "__path__"):
            names = sorted(info.name for info in pkgutil.iter_modules(module.__path__) if info.name != "__main__")
            parts += [importlib.import_module(f"{module.__name__}.{name}") for name in names]
        for part in parts:
            h.update(part.__name__.encode())
            h.update(inspect.getsource(part).encode())
    return h.hexdigest()[:12]


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts (config dicts, upstream fingerprints, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stage_dir(root: Path, stage: str, key: list[Any]) -> Path:
    """The folder :func:`cached_stage` builds (or finds) for ``stage`` with ``key``; complete when it holds DONE."""
    return Path(root).resolve() / stage / fingerprint(stage, *key)


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
    out = stage_dir(root, stage, key)
    fp = out.name
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
