"""The device side of one batch: every map's maximum and where it is, the feature vectors, and the
packed copy of them that goes to the host."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from zf_pipeline.features.schema import LayerInfo
from zf_pipeline.features.writers import Writers
from zf_pipeline.models.zfnet import ZFNet

CONV_FEATURE_GRID = 6  # conv1-4 are max-pooled to the 6x6 grid of pool5 (see zf_pipeline.features)


def _map_maxima(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and flat position (y * width + x, the first one on ties) of every map of a [N, C, H, W] or [N, C] batch."""
    if a.dim() == 2:  # an fc unit is a 1x1 map
        return a, torch.zeros_like(a, dtype=torch.long)
    if a.is_contiguous(memory_format=torch.channels_last):
        # [N, H*W, C] is a view of channels_last memory: reducing over dim 1 needs no transposed copy.
        return a.permute(0, 2, 3, 1).flatten(1, 2).max(dim=1)
    return a.flatten(2).max(dim=2)


def maxima_and_vectors(
    model: ZFNet, acts: dict[str, torch.Tensor], activation_layers: Sequence[str], feature_layers: Sequence[str],
    grid: int = CONV_FEATURE_GRID,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Per-map maxima and their positions, and feature vectors, from the activations ``acts`` of one batch
    (``model.forward_layers``'s result).

    Returns ``value`` [N, maps] (float16, maps of ``activation_layers`` concatenated in order),
    ``pos`` [N, maps] (int32, y * width + x of the first maximum) and ``{layer: vector [N, length]}``.
    Apart from the forward pass, so that :func:`zf_pipeline.features.extract` compiles it apart (see there).
    Ties go to the first maximum, eager and compiled (``test_compiled_pass_equals_eager``).
    """
    values, positions = [], []
    for name in activation_layers:
        v, p = _map_maxima(acts[name])
        values.append(v)
        positions.append(p)
    vectors = {}
    for name in feature_layers:
        a = acts[name]
        if a.dim() == 4:
            a = model.pool5(a) if name == "conv5" else F.adaptive_max_pool2d(a, grid)
        vectors[name] = a.flatten(1).to(torch.float16)
    first = next(iter(acts.values()))
    empty = first.new_zeros((len(first), 0))  # a features-only pass has no maps
    value = torch.cat(values, dim=1).to(torch.float16) if values else empty.half()
    pos = torch.cat(positions, dim=1).int() if positions else empty.int()
    return value, pos, vectors


def forward(model: ZFNet, names: tuple[str, ...], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The forward pass of one batch: the activations of ``names``."""
    return model.forward_layers(images, list(names))


def batch_outputs(
    model: ZFNet, act_layers: tuple[str, ...], feature_layers: tuple[str, ...], widths: torch.Tensor,
    acts: dict[str, torch.Tensor], labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of one batch on the device: the packed copy for the host (:meth:`Writers.pack`), and whether
    all map maxima are finite. ``widths``: the map width of every activations column."""
    value, pos, vectors = maxima_and_vectors(model, acts, act_layers, feature_layers)
    # y and x are split off on the device, where the integer division is free (on the host: the writers' largest cost).
    y = torch.div(pos, widths, rounding_mode="floor")
    x = (pos - y * widths).short()
    # One [3, N, maps] int16 block (value bits, y, x) for all layers: the host cuts it into layers as views.
    block = torch.stack([value.view(torch.int16), y.short(), x])
    return Writers.pack(labels, block, list(vectors.values())), torch.isfinite(value).all()


def outputs_agree(writers: Writers, eager: torch.Tensor, compiled: torch.Tensor, n: int,
                  tolerance: float = 2e-2) -> bool:
    """Whether one batch's packed outputs (:meth:`Writers.pack`, ``n`` images) agree up to rounding: the map
    maxima, and the vectors, within ``tolerance`` of their largest magnitude. Other kernels round differently
    (up to 5e-3 of it under bf16 autocast); a wrong graph was off by 0.4-1.1 of it (docs/results/extraction.md).
    Positions are not compared: rounding may break a near-tie the other way."""
    parts = []
    for flat in (eager, compiled):
        _, block, *vectors = torch.split(flat, writers.part_sizes(n))
        values = block[: n * writers.maps]  # the value row of the [3, n, maps] block
        parts.append([t.view(torch.float16).float() for t in (values, torch.cat([values[:0], *vectors]))])
    for e, c in zip(*parts):
        if e.numel() and float((e - c).abs().nan_to_num(nan=math.inf).max()) > tolerance * float(e.abs().max()):
            return False
    return True


def layer_shapes(
    model: ZFNet, sample: torch.Tensor, act_layers: Sequence[str], feature_layers: Sequence[str]
) -> dict[str, LayerInfo]:
    """Map sizes and vector lengths, from one image (widths vary across the Table 1 variants)."""
    names = list(dict.fromkeys([*act_layers, *feature_layers]))
    with torch.inference_mode():
        acts = model.forward_layers(sample[:1], names)
        _, _, vectors = maxima_and_vectors(model, acts, [], feature_layers)
    shapes = {}
    for name in names:
        s = acts[name].shape
        shapes[name] = LayerInfo(
            channels=s[1],
            height=s[2] if len(s) == 4 else 1,
            width=s[3] if len(s) == 4 else 1,
            vector_length=vectors[name].shape[1] if name in vectors else 0,
        )
    return shapes
