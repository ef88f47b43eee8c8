"""A number for first-layer filter quality: how much of a filter's power is high-frequency noise.

The paper's layer-1 filters (Fig. 6) are oriented edges and colour blobs: smooth, their power at low
spatial frequencies. A filter still holding its random initialization is white noise, its power spread
evenly over the spectrum. :func:`high_frequency_share` tells the two apart with one number per filter:
the share of the power of its frequency response (the kernel zero-padded, as a convolution sees it)
above a radial frequency of 0.25 cycles/pixel. White noise scores 1 - pi / 16 = 0.80 on average (the
area of the frequency square outside that circle), a smooth edge about 0.15, a Gabor of low frequency
under 0.01.
"""

from __future__ import annotations

import torch

CUTOFF = 0.25  # cycles/pixel; the Nyquist limit is 0.5
PAD = 8  # the response is sampled on a grid PAD times the kernel's side


def high_frequency_share(filters: torch.Tensor, cutoff: float = CUTOFF) -> torch.Tensor:
    """Per filter, the share of its spectral power (all channels, DC included) above ``cutoff`` cycles/pixel.

    ``filters``: ``[N, C, k, k]`` (a conv layer's weight) or ``[C, k, k]`` for one filter. Returns ``[N]``
    (or a scalar) in [0, 1]; an all-zero filter has no power and gets NaN.
    """
    if filters.ndim not in (3, 4) or filters.shape[-1] != filters.shape[-2]:
        raise ValueError(f"expected filters [N, C, k, k] or one filter [C, k, k], got shape {tuple(filters.shape)}")
    w = filters.detach().double().cpu()
    n = PAD * w.shape[-1]
    # zero-padded: the kernel's own frequency response, free of the wrap-around edge a k x k DFT would add
    power = torch.fft.fft2(w, s=(n, n)).abs().square().sum(-3)  # summed over input channels
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    high = power[..., radius > cutoff].sum(-1)
    return (high / power.sum((-2, -1))).float()


def median_high_frequency_share(model: torch.nn.Module, layer: str = "conv1") -> float:
    """The median over ``layer``'s filters of :func:`high_frequency_share` (the number a run reports)."""
    return float(high_frequency_share(model.get_submodule(layer).weight).nanquantile(0.5))


def high_frequency_summary(model: torch.nn.Module, layer: str = "conv1") -> dict:
    """``layer``'s filters by :func:`high_frequency_share`: median, quartiles and a histogram over [0, 1]
    in tenths (filters per bin), as a run reports them beside its filter grid."""
    share = high_frequency_share(model.get_submodule(layer).weight)
    p25, median, p75 = share.nanquantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
    counts = torch.histc(share, bins=10, min=0.0, max=1.0).int().tolist()
    return {"p25": p25, "median": median, "p75": p75, "histogram_tenths": counts}
