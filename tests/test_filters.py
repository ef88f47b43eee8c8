"""The filter-quality number: high-frequency share of first-layer filters."""

from __future__ import annotations

import math

import pytest
import torch

from zf_pipeline.analysis.filters import high_frequency_share, high_frequency_summary, median_high_frequency_share
from zf_pipeline.models.zfnet import build, variant


def _grid(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    return torch.meshgrid(c, c, indexing="ij")


def test_white_noise_scores_the_area_outside_the_cutoff_circle() -> None:
    torch.manual_seed(0)
    share = high_frequency_share(torch.randn(2000, 3, 7, 7))
    # a flat spectrum: the share of the [-0.5, 0.5]^2 frequency square outside radius 0.25
    assert share.mean().item() == pytest.approx(1 - math.pi / 16, abs=0.01)
    assert 0.7 < share.median().item() < 0.9


def test_smooth_gabor_and_blurred_edge_score_low_and_a_checkerboard_high() -> None:
    y, x = _grid(7)
    envelope = torch.exp(-(x**2 + y**2) / (2 * 2.0**2))
    gabor = envelope * torch.cos(2 * math.pi * 0.08 * (x * math.cos(0.6) + y * math.sin(0.6)))
    edge = torch.tanh((x + 0.5 * y) / 1.5)
    checker = (-1.0) ** (x + y + 0.0).round()
    filters = torch.stack([f.expand(3, 7, 7) for f in (gabor, edge, checker)])
    share = high_frequency_share(filters)
    assert share[0] < 0.02 and share[1] < 0.2 and share[2] > 0.95
    assert high_frequency_share(edge.expand(3, 7, 7)).item() == pytest.approx(share[1].item())  # one filter


def test_median_reads_the_model_conv1_and_bad_shapes_fail() -> None:
    net = build(variant("ours", num_classes=3, width=0.125), seed=0)
    assert 0.7 < median_high_frequency_share(net) < 0.9  # N(0, 1e-2) init is white noise
    with pytest.raises(ValueError, match=r"expected filters \[N, C, k, k\].*\(4, 7\)"):
        high_frequency_share(torch.zeros(4, 7))


def test_summary_counts_every_filter_and_agrees_with_the_median() -> None:
    net = build(variant("ours", num_classes=3, width=0.125), seed=0)
    summary = high_frequency_summary(net)
    assert sum(summary["histogram_tenths"]) == net.conv1.weight.shape[0]
    assert summary["p25"] <= summary["median"] <= summary["p75"]
    assert summary["median"] == pytest.approx(median_high_frequency_share(net))
