"""Layer-wise features: one pass of a trained net over a split, written to Parquet.

Two tables, both partitioned by layer in hive style (``<table>/layer=conv5/part-00000.parquet``):

- ``activations``: one row per (image, layer, channel): the feature map's maximum ``value`` and
  where it is (``y``, ``x``). Section 4 mines "the top 9 activations" of each map from these rows
  (:func:`zf_pipeline.mining.mine_top9`).
- ``features``: one row per (image, layer) with a fixed-size ``vector`` for the transfer probes
  (Section 5, Table 7): fc6 / fc7 whole; conv5 as the pool5 output (6x6 maps, 9216 values for
  Krizhevsky's widths, the input of fc6 in Fig. 2); conv1-4 max-pooled to the same 6x6 grid, so
  every conv layer is described at layer 5's spatial resolution and a probe sees where a feature
  fired, not only whether it fired, at a size (3,456 to 13,824 values) a linear SVM handles.

Everything is written inside a temporary folder renamed onto ``out_dir`` at the end; the summary
``_SUCCESS.json`` is the last file written, so a folder without it is never a finished pass.

Modules: :mod:`.schema` (tables, summary), :mod:`.outputs` (a batch's device work), :mod:`.writers`
(host buffers, Parquet writer threads), :mod:`.extraction` (:func:`extract`), :mod:`.sharded` (one
pass split over torchrun ranks, then merged), ``__main__`` (the CLI of the sharded pass).
"""

from zf_pipeline.features.extraction import extract
from zf_pipeline.features.outputs import CONV_FEATURE_GRID, maxima_and_vectors
from zf_pipeline.features.schema import (
    ACTIVATION_ROW_GROUP_ROWS,
    ACTIVATION_SCHEMA,
    ACTIVATION_WRITE_OPTIONS,
    FEATURE_WRITE_OPTIONS,
    SUMMARY_FILE,
    ExtractionSummary,
    LayerInfo,
    activation_table,
    feature_schema,
)
from zf_pipeline.features.sharded import extract_part, merge_parts, parts_dir
from zf_pipeline.features.writers import RING_SLOTS, PartitionWriter, WriterOptions, Writers

__all__ = [
    "ACTIVATION_ROW_GROUP_ROWS", "ACTIVATION_SCHEMA", "ACTIVATION_WRITE_OPTIONS", "CONV_FEATURE_GRID",
    "FEATURE_WRITE_OPTIONS",
    "RING_SLOTS", "SUMMARY_FILE", "ExtractionSummary", "LayerInfo", "PartitionWriter", "WriterOptions", "Writers",
    "activation_table", "extract", "extract_part", "feature_schema", "merge_parts", "parts_dir", "maxima_and_vectors",
]
