"""Query the extracted tables with DuckDB, from Python or from the ``duckdb`` command line.

Views (all read-only, over the Parquet files; no DuckDB database file is ever opened for writing,
since one would lock out every other process):

- ``activations``: image_id, label, channel, value, y, x, layer (from the hive path ``layer=...``)
- ``features``: image_id, label, split, vector (``FLOAT[]``), layer: every layer, so vectors vary in length
- ``features_<layer>`` (e.g. ``features_conv5``): one layer, ``vector`` as the fixed-size ``FLOAT[n]`` ARRAY
- ``top9``: layer, channel, rank, image_id, label, value, y, x (when ``top9.parquet`` exists)

The same statements are written to ``<root>/views.sql`` with paths relative to ``root``: from the
command line, ``cd <root> && duckdb -init views.sql``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from zf_pipeline.features import ExtractionSummary
from zf_pipeline.io import write_bytes_atomic

VIEWS_FILE = "views.sql"
TOP9_FILE = "top9.parquet"


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def views_sql(root: str | Path, top9: str = TOP9_FILE) -> str:
    """CREATE VIEW statements for the tables under ``root``, with paths relative to it."""
    root = Path(root)
    summary = ExtractionSummary.load(root)
    lines = ["-- zf-pipeline views; run from this folder: duckdb -init views.sql"]
    if summary.activation_layers:
        lines.append(
            "CREATE OR REPLACE VIEW activations AS SELECT * FROM "
            "read_parquet('activations/layer=*/*.parquet', hive_partitioning = true);"
        )
    if summary.feature_layers:
        lines.append(
            "CREATE OR REPLACE VIEW features AS SELECT * FROM read_parquet('features/layer=*/*.parquet', hive_partitioning = true);"
        )
    for layer in summary.feature_layers:
        n = summary.layers[layer].vector_length
        lines.append(
            f"CREATE OR REPLACE VIEW features_{layer} AS SELECT image_id, label, split, vector::FLOAT[{n}] AS vector "
            f"FROM read_parquet({_quote(f'features/layer={layer}/*.parquet')});"
        )
    if (root / top9).is_file():
        lines.append(f"CREATE OR REPLACE VIEW top9 AS SELECT * FROM read_parquet({_quote(top9)});")
    return "\n".join(lines) + "\n"


def write_views(root: str | Path, top9: str = TOP9_FILE) -> Path:
    """Write ``<root>/views.sql`` (atomically) and return its path."""
    path = Path(root) / VIEWS_FILE
    write_bytes_atomic(path, views_sql(root, top9).encode())
    return path


def connect(root: str | Path, top9: str = TOP9_FILE, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views over the tables under ``root`` (see the module docstring).

    ``top9`` is the mined table's path relative to ``root`` (or absolute).
    """
    root = Path(root).resolve()
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    # Relative paths in the views resolve against root, exactly as in the CLI started from root.
    con.execute("SET file_search_path = ?", [str(root)])
    con.execute(views_sql(root, top9))
    return con


__all__ = ["TOP9_FILE", "VIEWS_FILE", "connect", "views_sql", "write_views"]
