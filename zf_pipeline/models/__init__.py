"""ZFNet and its Table 1 variants."""

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
    "receptive_field",
    "variant",
]
