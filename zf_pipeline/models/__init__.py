"""ZFNet and its Table 1 variants, and checkpoint I/O."""

from zf_pipeline.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from zf_pipeline.models.zfnet import (
    CONV_LAYERS,
    FEATURE_LAYERS,
    LAYER_OUTPUT,
    TABLE1_PAPER,
    VARIANTS,
    ZFNet,
    ZFNetConfig,
    build,
    init_weights,
    receptive_field,
    variant,
)

__all__ = [
    "CONV_LAYERS",
    "FEATURE_LAYERS",
    "LAYER_OUTPUT",
    "TABLE1_PAPER",
    "VARIANTS",
    "ZFNet",
    "ZFNetConfig",
    "build",
    "init_weights",
    "load_checkpoint",
    "load_model",
    "receptive_field",
    "save_checkpoint",
    "variant",
]
