"""Transfer of the frozen ImageNet features to other datasets (section 5, Tables 4-7, Fig. 7).

    splits    seeded Caltech train/test splits as tables (image_id, split_index, role)
    probes    linear SVM / softmax: scikit-learn reference and a batched torch L-BFGS probe, C by CV
    protocol  a probe over every split (Caltech) or train -> val (PASCAL VOC, multi-label); run checks
    metrics   mean per-class accuracy, VOC average precision
    scratch   the "non-pretrained" rows: the network trained from scratch on a split
    loading   one layer's features from the features stage's Parquet

Tables 4-7 and Fig. 7's numbers beside the paper's: :mod:`zf_pipeline.tables`; their plots: :mod:`zf_pipeline.render`.
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
    missing_values,
    out_of_range,
    run_problems,
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

__all__ = [
    "FIG7_N_TRAIN",
    "TABLE4_N_TRAIN",
    "TABLE5_N_TRAIN",
    "RUN_SCHEMA",
    "VOC_CLASSES",
    "Probe",
    "ProbeConfig",
    "TooFewImagesError",
    "average_precision",
    "class_splits",
    "confusion_matrix",
    "evaluate_splits",
    "evaluate_voc",
    "fit_probe",
    "load_features",
    "mean_per_class_accuracy",
    "mean_per_class_accuracy_from_predictions",
    "missing_values",
    "out_of_range",
    "per_class_accuracy",
    "protocol_splits",
    "run_problems",
    "run_row",
    "split_problems",
    "split_rows",
    "voc_training_samples",
    "write_table",
]
