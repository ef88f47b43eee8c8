"""The ``zf-pipeline`` command: where a step's outputs are, and SQL over the extracted tables.

    zf-pipeline where table7                      the files of table7's last materialization
    zf-pipeline where features/caltech101/conv5   an extraction's folder
    zf-pipeline sql "SELECT layer, count(*) FROM top9 GROUP BY layer"

Both read the output root (``--root``, else ``$ZF_OUTPUT_ROOT``, else ``outputs``): ``where`` its
``_records/<asset>.json`` (what the asset's last run returned), ``sql`` the DuckDB views the ``top9`` step
leaves there (``activations``, ``features``, ``features_<layer>``, ``top9``; docs/schema.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from zf_pipeline.io import read_record

RECORDS = "_records"
# Record fields that name an output, in the order a reader wants them.
OUTPUT_FIELDS = ("path", "csv", "md", "png", "pngs", "index", "file", "extraction", "checkpoint")


def recorded_assets(root: Path) -> list[str]:
    """The assets with a record under ``root``, as their keys ('table7', 'features/caltech101/conv5')."""
    records = root / RECORDS
    return sorted(p.relative_to(records).with_suffix("").as_posix() for p in records.rglob("*.json"))


def where(root: Path, asset: str) -> list[tuple[str, str]]:
    """(field, path) for each output named by ``asset``'s record under the output ``root``."""
    path = root / RECORDS / f"{asset}.json"
    if not path.is_file():
        known = recorded_assets(root)
        raise FileNotFoundError(f"{path} does not exist: {asset!r} has not been materialized under {root} "
                                f"(recorded: {', '.join(known) or 'none'}); run "
                                f"`dagster asset materialize --select '*{asset}'`")
    record = read_record(path, root)
    found = []
    for field in OUTPUT_FIELDS:
        value = record.get(field)
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        found += [(field, v) for v in values if isinstance(v, str)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zf-pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.environ.get("ZF_OUTPUT_ROOT", "outputs"),
                        help="the output root (default: $ZF_OUTPUT_ROOT, else outputs)")
    commands = parser.add_subparsers(dest="command", required=True)
    where_cmd = commands.add_parser("where", help="print where an asset's last materialization put its outputs")
    where_cmd.add_argument("asset", help="an asset key, e.g. table7 or features/caltech101/conv5")
    sql_cmd = commands.add_parser("sql", help="run a query over the output root's DuckDB views and print the result")
    sql_cmd.add_argument("query")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        if args.command == "where":
            for field, path in where(root, args.asset):
                print(f"{field}\t{path}")
        else:
            import duckdb

            from zf_pipeline.query import connect

            try:
                connect(root).sql(args.query).show(max_rows=1000)
            except duckdb.Error as error:
                raise ValueError(f"{type(error).__name__}: {error}") from error
    except (FileNotFoundError, ValueError) as error:
        print(f"zf-pipeline: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
