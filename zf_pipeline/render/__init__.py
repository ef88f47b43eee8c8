"""The paper's figures as PNG files, one module per figure or table, named as the paper names them:

    fig3      Fig. 3   a feature map's strongest activation over training epochs        render_fig3
    fig4      Fig. 4   invariance to translation, scale and rotation                    render_fig4
    fig5      Fig. 5   occlusion sensitivity                                           render_fig5
    fig7      Fig. 7   Caltech-256 accuracy against training images per class          render_fig7
    fig8      Fig. 8   top-9 activations projected by the deconvnet, beside patches    render_fig8
    table2    Table 2  what each network added to the ensemble takes off the error     render_table2
    table3    Table 3  part correspondence                                             render_table3
    table7    Table 7  per-layer linear classifiers against depth                      render_table7
    source_size  Table 7 as the source set grows (issue 16): against layer, against classes
                                                         render_source_size_layers, render_source_size_classes
    common    display scaling, tiles, atomic writes, a dataset's sample grid           render_samples

The tables' numbers are in :mod:`zf_pipeline.tables`. Image grids are drawn with PIL, pixel-exact; curves
and maps with matplotlib's object API (no pyplot, no global state). Inputs are plain tensors / arrays and
lists; where images are needed they come from a callable ``image_id -> [3, H, W]`` tensor (or a mapping),
so nothing here knows where images live. Every file is written atomically.
"""

from zf_pipeline.render.common import image_to_rgb, normalize_projection, render_samples, unit_patch
from zf_pipeline.render.fig3 import render_fig3
from zf_pipeline.render.fig4 import render_fig4
from zf_pipeline.render.fig5 import render_fig5
from zf_pipeline.render.fig7 import render_fig7
from zf_pipeline.render.fig8 import choose_maps, render_fig8, shown_rows, top9_tiles
from zf_pipeline.render.source_size import render_source_size_classes, render_source_size_layers
from zf_pipeline.render.table2 import render_table2
from zf_pipeline.render.table3 import render_table3
from zf_pipeline.render.table7 import render_table7

__all__ = [
    "choose_maps", "image_to_rgb", "normalize_projection", "render_fig3", "render_fig4", "render_fig5", "render_fig7",
    "render_fig8", "render_samples", "render_source_size_classes", "render_source_size_layers", "render_table2",
    "render_table3", "render_table7", "shown_rows", "top9_tiles", "unit_patch",
]
