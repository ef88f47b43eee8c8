"""The ``zf-pipeline`` console script: ``where`` reads an asset's record, ``sql`` queries the output root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_reliability import _top9_run
from zf_pipeline.cli import main
from zf_pipeline.io import write_record

SCRIPT = Path(sys.prefix) / "bin" / "zf-pipeline"


def test_where_prints_the_files_of_an_assets_last_run_relative_to_the_current_root(tmp_path, capsys):
    root = tmp_path / "outputs"
    table = root / "table7" / "table7.parquet"
    write_record(root / "_records" / "table7.json", {"path": str(table), "csv": str(table.with_suffix(".csv")),
                                                      "pngs": {"conv1": str(root / "fig8" / "a.png")}, "rows": 3}, root)
    moved = tmp_path / "moved"
    root.rename(moved)  # the record holds paths relative to its root: they follow it
    assert main(["--root", str(moved), "where", "table7"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"path\t{moved / 'table7' / 'table7.parquet'}", f"csv\t{moved / 'table7' / 'table7.csv'}",
        f"pngs\t{moved / 'fig8' / 'a.png'}"]
    assert main(["--root", str(moved), "where", "table4"]) == 1
    err = capsys.readouterr().err
    assert "_records/table4.json does not exist" in err and "(recorded: table7)" in err


def test_the_installed_script_runs_sql_over_the_output_roots_views(tmp_path):
    root = tmp_path / "outputs"
    _top9_run(root)
    query = "SELECT count(DISTINCT channel) AS maps FROM top9 WHERE layer = 'conv5'"
    done = subprocess.run([str(SCRIPT), "--root", str(root), "sql", query], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "maps" in done.stdout and "│" in done.stdout
    bad = subprocess.run([str(SCRIPT), "--root", str(root), "sql", "SELECT * FROM nowhere"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and "zf-pipeline: CatalogException" in bad.stderr and "nowhere" in bad.stderr
