"""Table 2's ensemble as a plot: what each added network takes off the error of one."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from zf_pipeline.render.common import _save_figure
from zf_pipeline.tables import TABLE2_PAPER


def render_table2(sizes: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """:func:`zf_pipeline.evaluate.ensemble_sizes` as the val top-1 error taken off one network's against the
    number of networks averaged (the range over k-subsets shaded), beside the paper's 1- and 5-convnet rows.
    A gain, not an error, so that 20 classes and ImageNet's 1,000 share an axis."""
    one = sizes[0]["top1_err"]
    ks = [s["models"] for s in sizes]
    fig = Figure(figsize=(5, 3.6), dpi=120)
    ax = fig.subplots()
    ax.plot(ks, [one - s["top1_err"] for s in sizes], "o-", color="C0", label="ours (mean over k-subsets)")
    ax.fill_between(ks, [one - s["top1_err_max"] for s in sizes], [one - s["top1_err_min"] for s in sizes],
                    color="C0", alpha=0.2, label="ours, range over k-subsets")
    paper_one, paper_five = TABLE2_PAPER["1 convnet as per Fig. 2"][0], TABLE2_PAPER["5 convnets as per Fig. 2"][0]
    # the paper has 1 and 5 networks only: points, no line between them
    ax.plot([1, 5], [0, paper_one - paper_five], "x", color="C1", markersize=8, label="paper (ImageNet)")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xticks(ks)
    ax.set_xlabel("networks averaged")
    ax.set_ylabel("val top-1 error below one network's (points)")
    ax.set_title(f"Table 2: the ensemble (one network, mean: {one:.1f}% top-1)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)
