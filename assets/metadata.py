"""Asset metadata for the Dagster UI: inline images, markdown tables, paths."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from zf_pipeline.tables import publish


def image_md(path: str | Path, max_side: int = 900, title: str = "") -> dg.MetadataValue:
    """A PNG shown inline in the UI (markdown with a base64 data URI, downscaled to keep the event log small)."""
    img = Image.open(path)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    b64 = base64.b64encode(buf.getvalue()).decode()
    caption = f"**{title}**\n\n" if title else ""
    return dg.MetadataValue.md(f"{caption}![{Path(path).name}](data:image/png;base64,{b64})\n\n`{path}`")


def record_md(record: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    """Common metadata of a cached stage: where its output is, its fingerprint, cache hit or not."""
    return {
        "path": dg.MetadataValue.path(record["path"]),
        "fingerprint": dg.MetadataValue.text(record["fingerprint"]),
        "cache_hit": dg.MetadataValue.bool(bool(record.get("cached"))),
        "build_seconds": dg.MetadataValue.float(float(record.get("seconds", 0.0))),
    }


def publish_table(context: dg.AssetExecutionContext, folder: Path, name: str, table: Any, markdown: str) -> dict:
    """Write a results table with :func:`zf_pipeline.tables.publish`, show it inline, say where its files are."""
    record = publish(table, markdown, folder, name)
    context.add_output_metadata(
        {
            "table": dg.MetadataValue.md(markdown),
            "parquet": dg.MetadataValue.path(record["path"]),
            "csv": dg.MetadataValue.path(record["csv"]),
            "markdown": dg.MetadataValue.path(record["md"]),
        }
    )
    context.log.info(f"{name}: {Path(record['path']).with_suffix('')}.{{csv,parquet,md}}")
    return record
