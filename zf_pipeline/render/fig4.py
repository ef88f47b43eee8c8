"""Fig. 4: feature distance and class probability under translation, scale and rotation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from zf_pipeline.render.common import _save_figure


def render_fig4(results: Sequence[object], path: str | Path, dpi: int = 100) -> Path:
    """Fig. 4: one row per transform, columns = distance at each layer, then p(true class); one line per image.

    ``results`` are :class:`~zf_pipeline.analysis.invariance.InvarianceResult` (one per transform).
    """
    layers = list(results[0].distance)
    units = {"translation": "vertical shift (pixels)", "scale": "scale (ratio)", "rotation": "rotation (degrees)"}
    fig = Figure(figsize=(4 * (len(layers) + 1), 3 * len(results)), dpi=dpi)
    axes = np.atleast_2d(fig.subplots(len(results), len(layers) + 1, squeeze=False))
    for row, res in zip(axes, results):
        curves = [(f"{layer}: Euclidean distance", res.distance[layer]) for layer in layers] + [
            ("p(true class)", res.true_prob)
        ]
        for ax, (title, values) in zip(row, curves):
            for image_id, v in zip(res.image_ids, values):
                ax.plot(res.amounts, v, marker=".", label=image_id)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(units.get(res.transform, res.transform), fontsize=8)
        row[-1].set_ylim(0, 1)
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    return _save_figure(fig, path)

