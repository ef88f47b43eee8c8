"""Are two extraction folders the same rows? (a sharded pass against a one-process pass)

    python benchmarks/compare_extractions.py FOLDER_A FOLDER_B

Compares every partition of ``activations`` and ``features`` (rows sorted by image_id, channel; part
files and row order may differ); prints one line per table and exits 1 on a difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds


def canonical(t: pa.Table, keys: list[str]) -> pa.Table:
    """Dictionary columns decoded, rows sorted by ``keys``."""
    cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in t.columns]
    return pa.table(cols, names=t.column_names).sort_by([(k, "ascending") for k in keys])


def main() -> int:
    a, b = map(Path, sys.argv[1:3])
    same = True
    for table, keys in (("activations", ["image_id", "channel"]), ("features", ["image_id"])):
        for part in sorted((a / table).glob("layer=*")):
            ta = canonical(ds.dataset(part, format="parquet").to_table(), keys)
            tb = canonical(ds.dataset(b / table / part.name, format="parquet").to_table(), keys)
            equal = ta.equals(tb)
            same &= equal
            print(f"{table}/{part.name}: {ta.num_rows} vs {tb.num_rows} rows, equal: {equal}")
    for d in (a, b):
        s = json.loads((d / "_SUCCESS.json").read_text())
        print(f"{d}: {s['images']} images, pass {s['seconds']:.1f} s (slowest rank)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
