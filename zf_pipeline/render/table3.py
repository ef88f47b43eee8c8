"""Table 3: part correspondence (mean Hamming distance of feature-sign changes) as a bar chart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from zf_pipeline.render.common import _save_figure


def render_table3(rows: Sequence[Mapping], path: str | Path, dpi: int = 100) -> Path:
    """Table 3 as an image: one row per occluded part, one column per layer, "mean ± std"."""
    parts = list(dict.fromkeys(r["part"] for r in rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    cell = {(r["part"], r["layer"]): f"{r['mean']:.3f} ± {r['std']:.3f}" for r in rows}
    fig = Figure(figsize=(1.8 + 1.8 * len(layers), 0.4 * (len(parts) + 1.5)), dpi=dpi)
    ax = fig.subplots()
    ax.axis("off")
    ax.table(cellText=[[cell.get((p, lay), "") for lay in layers] for p in parts], rowLabels=parts,
             colLabels=[f"{lay}: mean sign change" for lay in layers], loc="center")
    return _save_figure(fig, path)

