"""Fig. 7: Caltech-256 accuracy against the number of training images per class."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure

from zf_pipeline.render.common import _save_figure
from zf_pipeline.tables import PAPER_TABLE5


def render_fig7(curve: pa.Table, path: str | os.PathLike) -> Path:
    """Draw :func:`zf_pipeline.tables.fig7`'s curve (mean +- std over splits) with the paper's Table 5 points
    and Bo et al.'s 60/class result as a line, to a PNG written atomically."""
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for method in sorted(set(curve["row"].to_pylist())):
        part = curve.filter(pc.equal(curve["row"], method))
        ax.errorbar(part["n_train"].to_numpy(), part["ours_mean"].to_numpy(), yerr=part["ours_std"].to_numpy(),
                    marker="o", markersize=3, capsize=2, label=f"ours, {method}")
    for row in ("ImageNet-pretrained convnet", "Non-pretrained convnet"):
        points = sorted(PAPER_TABLE5[row].items())
        ax.plot([n for n, _ in points], [m for _, (m, _) in points], "x", label=f"paper, {row}")
    ax.axhline(PAPER_TABLE5["(Bo et al., 2013)"][60][0], color="grey", linestyle="--",
               label="Bo et al. 2013, 60/class")
    ax.set_xlabel("training images per class")
    ax.set_ylabel("mean per-class accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Caltech-256")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)
