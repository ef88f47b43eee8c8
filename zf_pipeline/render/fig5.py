"""Fig. 5: occluding parts of an image: strongest layer-5 map, correct-class probability, most probable label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from zf_pipeline.render.common import ReceptiveField, _save_figure, normalize_projection


def render_fig5(
    image_rgb: torch.Tensor | np.ndarray,
    result: object,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    receptive_field: ReceptiveField | None = None,
    dpi: int = 100,
) -> Path:
    """Fig. 5 for one image, five panels: (a) the image and an occluder, (b) activity of the strongest
    layer-5 map, (c) its projection, (d) correct-class probability, (e) most probable label.

    ``result`` is an :class:`~zf_pipeline.analysis.occlusion.OcclusionResult`; ``image_rgb`` is
    ``[3, H, W]`` in [0, 1]. The maps are drawn at the occluder centres.
    """
    img = np.asarray(torch.as_tensor(image_rgb).float().cpu()).transpose(1, 2, 0)
    # The first synonym: ImageNet's names are WordNet word lists ('gas pump, gasoline pump, petrol pump, ...').
    name = (lambda k: class_names[k].split(",")[0]) if class_names is not None else str
    fig = Figure(figsize=(15, 3.4), dpi=dpi)
    ax = fig.subplots(1, 5)
    half = result.size / 2
    extent = (
        result.xs[0] + half - 0.5,
        result.xs[-1] + half + 0.5,
        result.ys[-1] + half + 0.5,
        result.ys[0] + half - 0.5,
    )
    ax[0].imshow(np.clip(img, 0, 1))
    mid_y, mid_x = result.ys[len(result.ys) // 2], result.xs[len(result.xs) // 2]
    ax[0].add_patch(Rectangle((mid_x - 0.5, mid_y - 0.5), result.size, result.size, color="0.5"))
    ax[0].set_title(f"(a) input: {name(result.label)}")
    im = ax[1].imshow(result.map_activity, extent=extent, cmap="jet")
    fig.colorbar(im, ax=ax[1], fraction=0.046)
    ax[1].set_title(f"(b) {result.layer} map {result.channel} activity")
    proj = normalize_projection(torch.as_tensor(result.projection)).numpy().transpose(1, 2, 0)
    ax[2].imshow(proj)
    if receptive_field is not None:
        size, stride, offset = receptive_field
        y, x = result.unit
        ax[2].add_patch(
            Rectangle((offset + x * stride - 0.5, offset + y * stride - 0.5), size, size, fill=False, color="k")
        )
    ax[2].set_title("(c) projection of that map")
    im = ax[3].imshow(result.true_prob, extent=extent, cmap="jet", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax[3], fraction=0.046)
    ax[3].set_title("(d) p(correct class)")
    labels = np.unique(result.top_label)
    im = ax[4].imshow(np.searchsorted(labels, result.top_label), extent=extent, cmap="tab20", vmin=0, vmax=19,
                      interpolation="nearest")
    handles = [Rectangle((0, 0), 1, 1, color=im.cmap(im.norm(k))) for k in range(len(labels))]
    ax[4].legend(handles, [name(int(k)) for k in labels][:20], fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    ax[4].set_title("(e) most probable label")
    for a in ax:
        a.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.9, wspace=0.3)
    return _save_figure(fig, path)

