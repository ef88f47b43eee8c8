"""Query the extracted tables with DuckDB, from Python or from the ``duckdb`` command line.

Views (all read-only, over the Parquet files; no DuckDB database file is ever opened for writing,
since one would lock out every other process):

- ``activations``: image_id, label, channel, value, y, x, layer
- ``features``: image_id, label, split, vector (``FLOAT[]``), layer: every layer, so vectors vary in length
- ``features_<layer>`` (e.g. ``features_conv5``): one layer, ``vector`` as the fixed-size ``FLOAT[n]`` ARRAY
- ``top9``: layer, channel, rank, image_id, label, value, y, x (when a mined table is there)

:func:`write_views` writes them for one folder: ``views.sql`` (paths relative to the folder: from the
command line, ``cd <folder> && duckdb -init views.sql``) and ``views.json`` (what :func:`connect`
reads). The pipeline writes them into every extraction folder and, from the ``top9`` asset, into the
output root, over the extraction and top-9 table of its last run: ``connect("outputs")``.

Every view lists its files explicitly, each path quoted: a ``[``, ``*``, ``,`` or ``'`` in a folder name
is never read as a glob, a separator or the end of a string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb

from zf_pipeline.features import SUMMARY_FILE, ExtractionSummary
from zf_pipeline.io import write_bytes_atomic

VIEWS_FILE = "views.sql"
SOURCES_FILE = "views.json"
TOP9_FILE = "top9.parquet"


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def _read(files: list[Path], base: Path | None) -> str:
    """``read_parquet`` over ``files``, listed one by one, relative to ``base`` when given. Hive partitioning
    off: a ``key=value`` folder above the output root would otherwise become a column."""
    paths = [os.path.relpath(f, base) if base is not None else str(f) for f in files]
    return f"read_parquet([{', '.join(_quote(p) for p in paths)}], hive_partitioning = false)"


def _by_layer(folder: Path, layers: list[str], base: Path | None) -> str:
    """One table over ``<folder>/layer=<name>/*.parquet`` of every layer, with the layer as a column."""
    parts = [
        f"SELECT *, {_quote(layer)} AS layer FROM {_read(sorted((folder / f'layer={layer}').glob('*.parquet')), base)}"
        for layer in layers
    ]
    return " UNION ALL BY NAME ".join(parts)


def views_sql(extraction: str | Path, top9: str | Path | None = None, base: str | Path | None = None) -> str:
    """CREATE VIEW statements over an extraction's tables and a mined top-9 table (by default the
    extraction's own ``top9.parquet``, when there is one); paths relative to ``base`` if given, else absolute."""
    extraction = Path(extraction).resolve()
    base = Path(base).resolve() if base is not None else None
    top9 = Path(top9).resolve() if top9 is not None else extraction / TOP9_FILE
    summary = ExtractionSummary.load(extraction)
    lines = ["-- zf-pipeline views; run from this folder: duckdb -init views.sql"]
    if summary.activation_layers:
        by_layer = _by_layer(extraction / "activations", list(summary.activation_layers), base)
        lines.append(f"CREATE OR REPLACE VIEW activations AS {by_layer};")
    if summary.feature_layers:
        lines.append(
            "CREATE OR REPLACE VIEW features AS "
            f"{_by_layer(extraction / 'features', list(summary.feature_layers), base)};"
        )
    for layer in summary.feature_layers:
        n = summary.layers[layer].vector_length
        files = sorted((extraction / "features" / f"layer={layer}").glob("*.parquet"))
        lines.append(
            f"CREATE OR REPLACE VIEW features_{layer} AS SELECT image_id, label, split, vector::FLOAT[{n}] AS vector "
            f"FROM {_read(files, base)};"
        )
    if top9.is_file():
        lines.append(f"CREATE OR REPLACE VIEW top9 AS SELECT * FROM {_read([top9], base)};")
    return "\n".join(lines) + "\n"


def write_views(folder: str | Path, extraction: str | Path | None = None, top9: str | Path | None = None) -> Path:
    """Write ``<folder>/views.sql`` and ``views.json`` (atomically) over ``extraction`` (default: ``folder``
    itself) and ``top9`` (default: the extraction's ``top9.parquet``); return the path of ``views.sql``."""
    folder = Path(folder).resolve()
    extraction = Path(extraction).resolve() if extraction is not None else folder
    sources = {"extraction": os.path.relpath(extraction, folder),
               "top9": os.path.relpath(Path(top9).resolve(), folder) if top9 is not None else None}
    write_bytes_atomic(folder / SOURCES_FILE, json.dumps(sources, indent=1).encode())
    path = folder / VIEWS_FILE
    write_bytes_atomic(path, views_sql(extraction, top9, base=folder).encode())
    return path


def connect(folder: str | Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views (see the module docstring) of ``folder``: one that
    :func:`write_views` wrote to (the output root, an extraction), or any extraction folder."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; expected an output root or an extraction folder")
    extraction, top9 = folder, None
    if (folder / SOURCES_FILE).is_file():
        sources = json.loads((folder / SOURCES_FILE).read_text())
        extraction = folder / sources["extraction"]
        top9 = folder / sources["top9"] if sources.get("top9") else None
    elif not (folder / SUMMARY_FILE).is_file():
        raise FileNotFoundError(f"{folder}: neither {SOURCES_FILE} nor {SUMMARY_FILE}; expected an output root where "
                                "the top9 asset ran, or an extraction folder")
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute(views_sql(extraction, top9))
    return con


__all__ = ["SOURCES_FILE", "TOP9_FILE", "VIEWS_FILE", "connect", "views_sql", "write_views"]
