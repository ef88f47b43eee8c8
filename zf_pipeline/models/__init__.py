"""ZFNet and its Table 1 variants, their initializations and filter renormalization, and checkpoint I/O."""

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
    filter_renormalizer,
    init_weights,
    kaiming_init,
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
    "filter_renormalizer",
    "init_weights",
    "kaiming_init",
    "load_checkpoint",
    "load_model",
    "receptive_field",
    "save_checkpoint",
    "variant",
]
