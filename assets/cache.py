"""Content-addressed caching for heavy assets.

Each heavy asset writes into ``<output_root>/<stage>/<fingerprint>/`` where the fingerprint hashes
the stage's code version (the source of the library modules it runs), its config and the
fingerprints of its upstream assets. A folder holding ``_asset.json`` is complete: a second
materialization with nothing changed reads that file and returns at once. The library writes
its own outputs atomically and resumably, so a killed stage restarts where it stopped.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from zf_pipeline.io import write_bytes_atomic

DONE = "_asset.json"


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
    out = Path(root) / stage / fp
    done = out / DONE
    if done.exists():
        record = json.loads(done.read_text())
        log(f"{stage}: cache hit {out}")
        return {**record, "cached": True}
    out.mkdir(parents=True, exist_ok=True)
    log(f"{stage}: building {out}")
    t0 = time.perf_counter()
    summary = build(out)
    record = {**summary, "path": str(out), "fingerprint": fp, "seconds": round(time.perf_counter() - t0, 3)}
    write_bytes_atomic(done, json.dumps(record, indent=2, default=str).encode())
    return {**record, "cached": False}
