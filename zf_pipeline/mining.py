"""Top-k activation mining (Section 2.1, Fig. 2 and 4): for every feature map, the k images of a
split that excite it most, as a DuckDB query over the ``activations`` Parquet tables.

Order: ``value`` descending, ties broken by ``image_id`` ascending (VARCHAR byte order). ``rank`` is
1..k in that order.

Per layer: a lower bound on each map's k-th value from a sample of row groups, then one scan
that keeps only rows at or above their map's bound and ranks those few exactly. Measured faster
than the exact one-query forms: ``min_by(struct, {-value, image_id}, k)`` builds a struct per
row, and ``row_number() OVER (...)`` sorts every row (docs/results/mining.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zf_pipeline.features import ExtractionSummary
from zf_pipeline.io import atomic_path

log = logging.getLogger(__name__)

# Both steps run one layer at a time, so a layer's maps share one scan and group by the small
# integer `channel` alone.
#
# Step 1: a lower bound on each map's k-th largest value, from a sample of row groups: the k-th
# largest of any subset of a map's rows is <= the k-th largest of all of them. A map with fewer
# than k sampled rows gets no bound (-inf).
KTH_VALUE_SQL = """
SELECT channel, CASE WHEN count(*) >= $k THEN list_last(max(value, $k)) ELSE '-inf'::FLOAT END AS kth
FROM sample GROUP BY channel
"""
# Step 2: every row at or above its map's bound: the top k plus whatever ties with the k-th (and a
# few more, as the bound is from a sample), so ordering these rows by (value desc, image_id) is
# exact. `value >= $lowest` is a constant filter that the Parquet scan applies while decoding.
TOP_K_SQL = """
SELECT $layer::VARCHAR AS layer, channel, rank::TINYINT AS rank, image_id, label, value, y, x
FROM (
    SELECT channel, row_number() OVER (PARTITION BY channel ORDER BY value DESC, image_id) AS rank,
           image_id, label, value::FLOAT AS value, y, x
    FROM read_parquet($files)
    WHERE value >= $lowest::FLOAT AND value >= ($kth::FLOAT[])[channel + 1]
    QUALIFY rank <= $k
)
"""
SAMPLE_IMAGES = 40_000  # images per layer in step 1's sample: the bound is then about the k * N / 40k-th value


def activation_layers(activations_dir: str | Path) -> dict[str, Path]:
    """{layer: partition folder} of an activations table; a clear error if there are none."""
    root = Path(activations_dir)
    layers = {p.name.removeprefix("layer="): p for p in sorted(root.glob("layer=*")) if any(p.glob("*.parquet"))}
    if not layers:
        raise FileNotFoundError(f"{root}: no activations partitions; expected layer=<name>/part-*.parquet files")
    return layers


def configure(con: duckdb.DuckDBPyConnection, threads: int | None = None, memory_limit: str | None = None) -> None:
    """Threads default to the CPUs this process may use; the top-k state is small, so memory is only a cap."""
    con.execute(f"SET threads = {int(threads or len(os.sched_getaffinity(0)))}")
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    con.execute("SET preserve_insertion_order = false")


def sample_row_groups(files: list[Path], images: int = SAMPLE_IMAGES) -> pa.Table:
    """``channel`` and ``value`` of evenly spaced row groups holding about ``images`` images."""
    groups = [(f, g) for f in map(pq.ParquetFile, files) for g in range(f.metadata.num_row_groups)]
    first = groups[0][0].read_row_group(0, columns=["channel"]).column(0)
    images_per_group = max(1, len(first) // (pc.max(first).as_py() + 1))
    step = max(1, len(groups) * images_per_group // images)
    sample = pa.concat_tables([f.read_row_group(g, columns=["channel", "value"]) for f, g in groups[::step]])
    return sample.set_column(1, "value", sample.column("value").cast(pa.float32()))  # DuckDB takes no Arrow float16


def top_k(
    con: duckdb.DuckDBPyConnection, layer: str, folder: Path, k: int = 9, sample_images: int = SAMPLE_IMAGES
) -> pa.Table:
    """The top-k rows of every map of one layer partition: layer, channel, rank (1..k), image_id, label, value, y, x."""
    files = sorted(folder.glob("*.parquet"))
    con.register("sample", sample_row_groups(files, sample_images))
    try:
        kth = dict(con.execute(KTH_VALUE_SQL, {"k": k}).fetchall())
    finally:
        con.unregister("sample")
    by_channel = [kth.get(c, -math.inf) for c in range(max(kth) + 1)]  # list index = channel + 1
    # The files listed, not a glob: DuckDB would read a '[' in the folder's path as a pattern.
    params = {"layer": layer, "files": [str(f) for f in files], "k": k, "kth": by_channel, "lowest": min(by_channel)}
    return con.sql(TOP_K_SQL, params=params).to_arrow_table()


def mine_top9(
    activations_dir: str | Path,
    out_path: str | Path,
    k: int = 9,
    *,
    threads: int | None = None,
    memory_limit: str | None = None,
    sample_images: int = SAMPLE_IMAGES,
) -> int:
    """Write the top-``k`` rows of every (layer, channel) map to ``out_path`` (Parquet); return the row count.

    Columns: layer, channel, rank (1..k), image_id, label, value, y, x, sorted by layer, channel,
    rank. Maps with fewer than k images get as many rows as they have images. ``sample_images``
    sizes step 1's sample (any size gives the same result; it only moves work between the steps).
    """
    layers = activation_layers(activations_dir)
    started = time.monotonic()
    con = duckdb.connect()
    try:
        configure(con, threads, memory_limit)
        parts = []
        for layer, folder in layers.items():
            parts.append(top_k(con, layer, folder, k, sample_images))
            log.info("top-%d of %s: %.1f s", k, layer, time.monotonic() - started)
    finally:
        con.close()
    table = pa.concat_tables(parts).sort_by([("layer", "ascending"), ("channel", "ascending"), ("rank", "ascending")])
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    log.info("mined top-%d of %s: %d rows in %.1f s", k, activations_dir, table.num_rows, time.monotonic() - started)
    return table.num_rows


def check_top_counts(top_path: str | Path, extraction_dir: str | Path, k: int = 9) -> tuple[bool, str]:
    """Asset check: every map of the extraction has exactly min(k, images) rows, ranked 1..n, in ``top_path``."""
    summary = ExtractionSummary.load(extraction_dir)
    expected = min(k, summary.images)
    con = duckdb.connect()
    try:
        counts = dict(
            ((layer, channel), (n, ok))
            for layer, channel, n, ok in con.execute(
                "SELECT layer, channel, count(*), list_sort(list(rank)) = generate_series(1, count(*))::TINYINT[] "
                "FROM read_parquet(?) GROUP BY ALL",
                [[str(top_path)]],
            ).fetchall()
        )
    finally:
        con.close()
    bad = []
    for layer in summary.activation_layers:
        for channel in range(summary.layers[layer].channels):
            n, ranks_ok = counts.pop((layer, channel), (0, True))
            if n != expected or not ranks_ok:
                bad.append(f"{layer}/{channel}: {n} rows" + ("" if ranks_ok else " with ranks not 1..n"))
    bad += [f"{layer}/{channel}: not a map of the extraction" for layer, channel in counts]
    if bad:
        return False, f"{len(bad)} maps without exactly {expected} ranked rows in {top_path}, e.g. {bad[:5]}"
    maps = sum(summary.layers[layer].channels for layer in summary.activation_layers)
    return True, f"all {maps} maps have {expected} rows ranked 1..{expected}"


def check_activation_counts(extraction_dir: str | Path) -> tuple[bool, str]:
    """Asset check: each activations partition holds images x channels rows (from the Parquet footers)."""
    root = Path(extraction_dir)
    summary = ExtractionSummary.load(root)
    bad = []
    for layer in summary.activation_layers:
        files = sorted((root / "activations" / f"layer={layer}").glob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        expected = summary.images * summary.layers[layer].channels
        if rows != expected:
            bad.append(
                f"{layer}: {rows} rows, expected {summary.images} images x {summary.layers[layer].channels} "
                f"channels = {expected}"
            )
    if bad:
        return False, f"activation row counts in {root / 'activations'} are off: " + "; ".join(bad)
    return True, f"{len(summary.activation_layers)} layers x {summary.images} images: row counts match"


__all__ = ["activation_layers", "check_activation_counts", "check_top_counts", "configure", "mine_top9", "top_k"]
