"""Table 7 as a plot: accuracy of the per-layer linear classifiers against depth."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
from matplotlib.figure import Figure

from zf_pipeline.render.common import _save_figure
from zf_pipeline.tables import PAPER_TABLE7, TABLE7_LAYERS


def render_table7(table: pa.Table, path: str | os.PathLike) -> Path:
    """Draw :func:`zf_pipeline.tables.table7` as accuracy against depth, one panel per dataset, to a PNG written
    atomically: ours (mean +- std over splits) as lines, the paper's (for the paper's datasets) as dashed crosses of the
    same colour. (classifier, layer) pairs we did not run (``ours_mean`` None) are left out of our lines."""
    rows = table.to_pylist()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    classifiers = list(dict.fromkeys(classifier for classifier, _ in PAPER_TABLE7))
    fig = Figure(figsize=(5 * len(datasets), 4), dpi=120)
    axes = fig.subplots(ncols=len(datasets), squeeze=False, sharey=True)
    for ax, dataset in zip(axes[0], datasets):
        for i, classifier in enumerate(classifiers):
            part = [r for r in rows if (r["dataset"], r["classifier"]) == (dataset, classifier)]
            ran = [r for r in part if r["ours_mean"] is not None]
            if ran:
                ax.errorbar([TABLE7_LAYERS.index(r["layer"]) for r in ran], [r["ours_mean"] for r in ran],
                            yerr=[r["ours_std"] for r in ran], color=f"C{i}", marker="o", markersize=3,
                            capsize=2, label=f"ours, {classifier}")
            paper = [r for r in part if r["paper_mean"] is not None]
            if paper:
                ax.plot([TABLE7_LAYERS.index(r["layer"]) for r in paper], [r["paper_mean"] for r in paper], "x--",
                        color=f"C{i}", label=f"paper, {classifier}")
        ax.set_xticks(range(len(TABLE7_LAYERS)), TABLE7_LAYERS)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 100)
        ax.set_title(f"{dataset}, {next(r['n_train'] for r in rows if r['dataset'] == dataset)} train/class")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean per-class accuracy (%)")
    fig.tight_layout()
    return _save_figure(fig, path)
