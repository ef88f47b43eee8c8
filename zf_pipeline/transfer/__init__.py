"""Transfer of the frozen ImageNet features to other datasets (section 5, Tables 4-7, Fig. 7).

    splits    seeded Caltech train/test splits as tables (image_id, split_index, role)
    probes    linear SVM / softmax: scikit-learn reference and a batched torch L-BFGS probe, C by CV
    protocol  a probe over every split (Caltech) or train -> val (PASCAL VOC, multi-label)
    metrics   mean per-class accuracy, VOC average precision
    tables    Tables 4-7 and Fig. 7 beside the paper's numbers, their plots; Parquet/CSV writers; check helpers
    loading   one layer's features from the features stage's Parquet
"""

from zf_pipeline.io import write_table
from zf_pipeline.transfer.loading import load_features
from zf_pipeline.transfer.metrics import (
    average_precision,
    confusion_matrix,
    mean_per_class_accuracy,
    mean_per_class_accuracy_from_predictions,
    per_class_accuracy,
)
from zf_pipeline.transfer.probes import Probe, ProbeConfig, fit_probe
from zf_pipeline.transfer.protocol import (
    RUN_SCHEMA,
    VOC_CLASSES,
    evaluate_splits,
    evaluate_voc,
    run_row,
    voc_training_samples,
)
from zf_pipeline.transfer.splits import (
    FIG7_N_TRAIN,
    TABLE4_N_TRAIN,
    TABLE5_N_TRAIN,
    TooFewImagesError,
    class_splits,
    protocol_splits,
    split_problems,
    split_rows,
)
from zf_pipeline.transfer.tables import (
    fig7,
    missing_values,
    out_of_range,
    plot_fig7,
    plot_table7,
    run_problems,
    table4,
    table5,
    table6,
    table7,
)

__all__ = [
    "FIG7_N_TRAIN", "TABLE4_N_TRAIN", "TABLE5_N_TRAIN", "RUN_SCHEMA", "VOC_CLASSES", "Probe", "ProbeConfig", "TooFewImagesError", "average_precision", "class_splits",
    "confusion_matrix", "evaluate_splits", "evaluate_voc", "fig7", "fit_probe", "load_features",
    "mean_per_class_accuracy", "mean_per_class_accuracy_from_predictions", "missing_values", "out_of_range",
    "per_class_accuracy", "plot_fig7", "plot_table7", "protocol_splits", "run_problems", "run_row", "split_problems",
    "split_rows", "table4", "table5", "table6", "table7", "voc_training_samples", "write_table",
]
