"""The convnets of the paper (Fig. 2, Table 1) as one configurable definition.

Every layer is a named child module in forward order, so any stage can hook it by name:

    conv1 relu1 pool1 norm1  conv2 relu2 pool2 norm2  conv3 relu3  conv4 relu4  conv5 relu5 pool5
    flatten  fc6 relu6 drop6  fc7 relu7 drop7  fc8

Section 2: each layer is (i) convolution, (ii) relu, (iii) [optional] 3x3 stride-2 max pooling,
(iv) [optional] local contrast normalization across feature maps (layers 1 and 2). ReLUs are
``nn.ReLU`` modules (not functional calls) so that deconvnet / attribution hooks can find them.
The activation of "layer k" that the paper visualizes and mines is the rectified map, the output
of ``reluk`` (``fc8`` for the classifier's logits): see :data:`LAYER_OUTPUT`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

# The feature layers of the paper and the module whose output is that layer's activation.
LAYER_OUTPUT: dict[str, str] = {
    "conv1": "relu1",
    "conv2": "relu2",
    "conv3": "relu3",
    "conv4": "relu4",
    "conv5": "relu5",
    "fc6": "relu6",
    "fc7": "relu7",
    "fc8": "fc8",
}
CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FEATURE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


@dataclass(frozen=True)
class ZFNetConfig:
    """Architecture of one network of Table 1.

    Defaults are Krizhevsky et al.'s net with dense connections (the paper's replication).
    """

    num_classes: int = 1000
    conv_channels: tuple[int, int, int, int, int] = (96, 256, 384, 384, 256)
    conv1_kernel: int = 11
    conv1_stride: int = 4
    conv1_padding: int = 2
    conv2_stride: int = 1
    conv2_padding: int = 2
    fc_units: int = 4096
    removed: tuple[str, ...] = ()  # layers removed as in Table 1: any of conv3, conv4, fc6, fc7
    width: float = 1.0  # multiplies every conv / fc width (the demo uses a narrow net)
    dropout: float = 0.5
    lrn: bool = True  # local response normalization after layers 1 and 2
    pool_ceil_mode: bool = False
    input_size: int = 224  # side of the square crop fed to the net (the demo trains on smaller crops)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ZFNetConfig":
        d = dict(d)
        d["conv_channels"] = tuple(d["conv_channels"])
        d["removed"] = tuple(d.get("removed", ()))
        return cls(**d)


def _variants() -> dict[str, ZFNetConfig]:
    k = ZFNetConfig()
    ours = replace(k, conv_channels=(96, 256, 512, 1024, 512))
    return {
        "krizhevsky": k,
        "removed_3_4": replace(k, removed=("conv3", "conv4")),
        "removed_7": replace(k, removed=("fc7",)),
        "removed_6_7": replace(k, removed=("fc6", "fc7")),
        "removed_3_4_6_7": replace(k, removed=("conv3", "conv4", "fc6", "fc7")),
        "fc_2048": replace(k, fc_units=2048),
        "fc_8192": replace(k, fc_units=8192),
        "ours": ours,  # Table 1 "Our model": layers 3,4,5 at 512-1024-512 maps
        "ours_fc_8192": replace(ours, fc_units=8192),
        # The later published ZF net: 7x7 stride-2 conv1, stride-2 conv2 (110 -> 55 -> 26 -> 13 -> 6).
        "zf_published": replace(
            k, conv1_kernel=7, conv1_stride=2, conv1_padding=1, conv2_stride=2, conv2_padding=0, pool_ceil_mode=True
        ),
    }


VARIANTS: dict[str, ZFNetConfig] = _variants()

# The paper's numbers for Table 1 (train top-1, val top-1, val top-5 error %), keyed like VARIANTS.
TABLE1_PAPER: dict[str, tuple[float, float, float]] = {
    "krizhevsky": (35.1, 40.5, 18.1),
    "removed_3_4": (41.8, 45.4, 22.1),
    "removed_7": (27.4, 40.0, 18.4),
    "removed_6_7": (27.4, 44.8, 22.4),
    "removed_3_4_6_7": (71.1, 71.3, 50.1),
    "fc_2048": (40.3, 41.7, 18.8),
    "fc_8192": (26.8, 40.0, 18.1),
    "ours": (28.7, 38.3, 16.4),
    "ours_fc_8192": (21.4, 38.0, 16.5),
}


def variant(name: str, **overrides) -> ZFNetConfig:
    """A Table 1 architecture by name, with optional field overrides (num_classes, width, ...)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown architecture {name!r}; expected one of {sorted(VARIANTS)}")
    return replace(VARIANTS[name], **overrides)


class ZFNet(nn.Sequential):
    """A Krizhevsky / Zeiler-Fergus convnet built from a :class:`ZFNetConfig`; input 3 x input_size x input_size."""

    def __init__(self, config: ZFNetConfig = ZFNetConfig()):
        self.config = config
        c = config
        w = [max(1, round(ch * c.width)) for ch in c.conv_channels]
        fc = max(1, round(c.fc_units * c.width))
        for name in c.removed:
            if name not in ("conv3", "conv4", "fc6", "fc7"):
                raise ValueError(f"cannot remove layer {name!r}: only conv3, conv4, fc6, fc7 are removable")

        def pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=c.pool_ceil_mode)

        def lrn() -> nn.Module:
            # Krizhevsky's constants: k=2, n=5, alpha=1e-4, beta=0.75.
            return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0) if c.lrn else nn.Identity()

        m: OrderedDict[str, nn.Module] = OrderedDict()
        m["conv1"] = nn.Conv2d(3, w[0], c.conv1_kernel, c.conv1_stride, c.conv1_padding)
        m["relu1"], m["pool1"], m["norm1"] = nn.ReLU(), pool(), lrn()
        m["conv2"] = nn.Conv2d(w[0], w[1], 5, c.conv2_stride, c.conv2_padding)
        m["relu2"], m["pool2"], m["norm2"] = nn.ReLU(), pool(), lrn()
        prev = w[1]
        for i in (3, 4, 5):
            if f"conv{i}" in c.removed:
                continue
            m[f"conv{i}"] = nn.Conv2d(prev, w[i - 1], 3, 1, 1)
            m[f"relu{i}"] = nn.ReLU()
            prev = w[i - 1]
        m["pool5"] = pool()
        m["flatten"] = nn.Flatten()
        spatial = self._pool5_size(c)
        features = prev * spatial * spatial
        for i in (6, 7):
            if f"fc{i}" in c.removed:
                continue
            m[f"fc{i}"] = nn.Linear(features, fc)
            m[f"relu{i}"] = nn.ReLU()
            m[f"drop{i}"] = nn.Dropout(c.dropout)
            features = fc
        m["fc8"] = nn.Linear(features, c.num_classes)
        super().__init__(m)

    @staticmethod
    def _pool5_size(c: ZFNetConfig) -> int:
        def conv(n: int, k: int, s: int, p: int) -> int:
            return (n + 2 * p - k) // s + 1

        def pool(n: int) -> int:
            return -(-(n - 3) // 2) + 1 if c.pool_ceil_mode else (n - 3) // 2 + 1

        n = pool(conv(c.input_size, c.conv1_kernel, c.conv1_stride, c.conv1_padding))
        n = pool(conv(n, 5, c.conv2_stride, c.conv2_padding))
        return pool(n)

    @property
    def layers(self) -> tuple[str, ...]:
        """The paper's layers present in this network (removed ones left out), conv1 ... fc8."""
        return tuple(name for name, out in LAYER_OUTPUT.items() if out in self._modules)

    def forward_layers(self, x: torch.Tensor, layers: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
        """Run the net up to the deepest requested layer; return each layer's activation by name."""
        wanted = {LAYER_OUTPUT[name]: name for name in layers}
        missing = [name for name in layers if LAYER_OUTPUT[name] not in self._modules]
        if missing:
            raise KeyError(f"layers {missing} are not in this network (removed={self.config.removed})")
        out: dict[str, torch.Tensor] = {}
        for name, module in self._modules.items():
            x = module(x)
            if name in wanted:
                out[wanted[name]] = x
                if len(out) == len(wanted):
                    break
        return out


def init_weights(model: nn.Module, std: float = 1e-2, bias: float = 0.0) -> None:
    """Section 3.1: "All weights are initialized to 10^-2 and biases are set to 0" (read as N(0, std^2))."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.constant_(module.bias, bias)


def kaiming_init(model: nn.Module) -> None:
    """He-normal weights (fan-in, relu gain) and zero biases: trains from the first step without a warm-up."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


@torch.no_grad()
def renormalize_filters(weights: list[torch.Tensor], radius: float) -> None:
    """Section 3.1 (ECCV text): every filter (output channel) whose RMS exceeds ``radius`` is scaled back to it.

    Vectorized over the filters of each layer (a norm, a clamp, a multiply); the others are multiplied
    by exactly 1, so they stay bitwise as they were.
    """
    for w in weights:
        # RMS > radius  <=>  ||w||_2 > radius * sqrt(fan-in)
        limit = radius * math.sqrt(w[0].numel())
        w.mul_((limit / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)).clamp_(max=1.0))


def filter_renormalizer(model: nn.Module, radius: float, compile: bool = False) -> Callable[[], None]:
    """``renorm()`` applying :func:`renormalize_filters` to every conv layer of ``model`` (one fused graph
    per layer when ``compile``)."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    fn = torch.compile(renormalize_filters) if compile else renormalize_filters
    return lambda: fn(weights, radius)


def build(config: ZFNetConfig, init_std: float = 1e-2, seed: int | None = None) -> ZFNet:
    """A freshly initialized network; ``seed`` makes the initialization reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    model = ZFNet(config)
    init_weights(model, init_std)
    return model


def receptive_field(model: ZFNet, layer: str) -> tuple[int, int, int]:
    """(size, stride, offset) in input pixels of one unit of ``layer``'s map.

    Unit (y, x) of the layer sees input rows ``offset + y*stride`` .. ``+ size - 1`` (may fall
    outside the image where padding was used). Used to cut the image patches beside projections.
    """
    size, stride, offset = 1, 1, 0
    target = LAYER_OUTPUT[layer]
    for name, module in model._modules.items():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            s = module.stride if isinstance(module.stride, int) else module.stride[0]
            p = module.padding if isinstance(module.padding, int) else module.padding[0]
            offset -= p * stride
            size += (k - 1) * stride
            stride *= s
        if name == target:
            return size, stride, offset
    raise KeyError(f"layer {layer!r} is not in this network")
