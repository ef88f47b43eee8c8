"""The deconvnet against an independent oracle (captum's NeuronDeconvolution) and its defining properties."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zf_pipeline.deconv import _unpool, project, project_top, strongest_units
from zf_pipeline.models.zfnet import CONV_LAYERS, LAYER_OUTPUT, ZFNet, receptive_field, variant

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")  # captum notes its hooks


def small_net(input_size: int = 67, seed: int = 0, **overrides) -> ZFNet:
    """A narrow ZFNet in float64 with PyTorch's default init (non-trivial relu patterns at every depth)."""
    torch.manual_seed(seed)
    return ZFNet(variant("krizhevsky", width=0.06, num_classes=5, input_size=input_size, **overrides)).double().eval()


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class StraightThroughLRN(nn.Module):
    """Forward: the real LRN (so the switches above it are unchanged); backward: identity."""

    def __init__(self, lrn: nn.Module):
        super().__init__()
        self.lrn = lrn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.lrn(x) - x).detach()


def oracle(model: ZFNet, x: torch.Tensor, layer: str, c: int, y: int, xx: int, norm: str) -> torch.Tensor:
    net = copy.deepcopy(model)
    if norm == "identity":
        for name in ("norm1", "norm2"):
            setattr(net, name, StraightThroughLRN(getattr(net, name)))
    deconv = captum_attr.NeuronDeconvolution(net, getattr(net, LAYER_OUTPUT[layer]))
    return deconv.attribute(x.clone().requires_grad_(True), neuron_selector=(c, y, xx))


@pytest.mark.parametrize("norm", ["identity", "gradient"])
@pytest.mark.parametrize("layer", CONV_LAYERS)
def test_matches_captum_deconvolution(layer: str, norm: str) -> None:
    model = small_net()
    x = images(2, 67)
    channels = [0, model.get_submodule(layer).out_channels - 1]
    _, ys, xs = strongest_units(model, x, layer, channels)
    ours = project(model, x, layer, channels, ys, xs, norm=norm, seed="one")
    for k in range(2):
        ref = oracle(model, x[k : k + 1], layer, channels[k], int(ys[k]), int(xs[k]), norm)[0]
        assert ref.abs().max() > 0, "oracle projection is all zero: the test would prove nothing"
        torch.testing.assert_close(ours[k], ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))


def test_identity_and_gradient_differ_when_lrn_is_active() -> None:
    # Large inputs make alpha * sum(x^2) matter, so the LRN's Jacobian is far from a scaled identity.
    model = small_net()
    x = images(1, 67) * 300
    _, y, xx = strongest_units(model, x, "conv2", [1])
    a = project(model, x, "conv2", [1], y, xx, norm="identity", seed="one")
    b = project(model, x, "conv2", [1], y, xx, norm="gradient", seed="one")
    cos = F.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos < 0.999


def test_unpool_adds_where_overlapping_windows_share_a_maximum() -> None:
    # 5x5 map, 3x3/2 pool -> 2x2 output; the centre (2, 2) is the maximum of all four windows.
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 1.0
    pooled, switches = F.max_pool2d(x, 3, 2, return_indices=True)
    assert (switches == 12).all()
    signal = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)

    ours = _unpool(signal, switches, x.shape)
    wrong = nn.MaxUnpool2d(3, 2)(signal, switches, output_size=x.shape[-2:])
    xg = x.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(F.max_pool2d(xg, 3, 2), xg, signal)

    assert ours[0, 0, 2, 2] == 10.0 and ours.sum() == 10.0
    torch.testing.assert_close(ours, autograd)
    assert wrong[0, 0, 2, 2] != 10.0, "MaxUnpool2d overwrites instead of adding"


@pytest.mark.parametrize("layer", CONV_LAYERS)
def test_projection_lies_inside_the_receptive_field(layer: str) -> None:
    model = small_net(input_size=224, seed=3)
    x = images(1, 224, seed=4)
    act = model.forward_layers(x, [layer])[layer]
    y, xx = act.shape[2] // 2, act.shape[3] // 2
    proj = project(model, x, layer, [0], [y], [xx], seed="one")[0]
    size, stride, offset = receptive_field(model, layer)
    inside = torch.zeros(224, 224, dtype=torch.bool)
    inside[
        max(0, offset + y * stride) : offset + y * stride + size,
        max(0, offset + xx * stride) : offset + xx * stride + size,
    ] = True
    support = proj.abs().sum(0) > 0
    assert support.any()
    assert not (support & ~inside).any(), f"{layer}: projection leaks outside the receptive field"
    if layer != "conv5":  # conv5's field covers the whole 224 image
        assert not inside.all()


@pytest.mark.parametrize("norm", ["identity", "gradient"])
def test_projection_scales_linearly_with_the_seed(norm: str) -> None:
    model = small_net()
    x = images(3, 67)
    channels = [2, 3, 4]
    value, ys, xs = strongest_units(model, x, "conv4", channels)
    one = project(model, x, "conv4", channels, ys, xs, norm=norm, seed="one")
    scaled = project(model, x, "conv4", channels, ys, xs, norm=norm, seed=torch.tensor([0.5, 3.0, 7.25]))
    default = project(model, x, "conv4", channels, ys, xs, norm=norm)
    torch.testing.assert_close(scaled, one * torch.tensor([0.5, 3.0, 7.25]).view(3, 1, 1, 1).double())
    torch.testing.assert_close(default, one * value.view(3, 1, 1, 1))


def test_batched_equals_one_at_a_time() -> None:
    model = small_net()
    x = images(3, 67)
    image_index = [0, 2, 2, 1, 0]
    channels, ys, xs = [0, 1, 2, 3, 4], [1, 0, 2, 1, 2], [2, 1, 0, 1, 2]
    batched = project(model, x, "conv2", channels, ys, xs, image_index=image_index, batch_size=2, norm="gradient")
    for k in range(5):
        single = project(
            model, x[image_index[k] : image_index[k] + 1], "conv2", [channels[k]], [ys[k]], [xs[k]], norm="gradient"
        )
        torch.testing.assert_close(batched[k], single[0])


def test_project_top_projects_the_maximum_of_each_map() -> None:
    model = small_net()
    x = images(2, 67)
    proj, value, ys, xs = project_top(model, x, "conv3", [1, 2], batch_size=1)
    act = model.forward_layers(x, ["conv3"])["conv3"]
    for k, c in enumerate([1, 2]):
        assert value[k] == act[k, c].max()
        assert act[k, c, ys[k], xs[k]] == act[k, c].max()
    torch.testing.assert_close(proj, project(model, x, "conv3", [1, 2], ys, xs))


def test_works_without_layers_3_and_4() -> None:
    model = small_net(removed=("conv3", "conv4"))
    x = images(1, 67)
    proj = project(model, x, "conv5", [0], [1], [1], seed="one")
    assert proj.shape == (1, 3, 67, 67) and proj.abs().sum() > 0
    with pytest.raises(KeyError, match="conv3"):
        project(model, x, "conv3", [0], [0], [0])


def test_bad_seeds_are_rejected_clearly() -> None:
    model = small_net()
    x = images(1, 67)
    with pytest.raises(IndexError, match="conv1"):
        project(model, x, "conv1", [0], [999], [0])
    with pytest.raises(ValueError, match="fc6"):
        project(model, x, "fc6", [0], [0], [0])
    with pytest.raises(ValueError, match="norm"):
        project(model, x, "conv1", [0], [0], [0], norm="inverse")
    with pytest.raises(ValueError, match="one per seed"):
        project(model, x, "conv1", [0, 1], [0], [0], image_index=[0, 0])


def test_gradient_mode_works_under_inference_mode() -> None:
    model = small_net()
    x = images(2, 67)
    expected = project(model, x, "conv2", [0, 1], [1, 1], [1, 2], norm="gradient")
    with torch.inference_mode():
        got = project(model, x, "conv2", [0, 1], [1, 1], [1, 2], norm="gradient")
    torch.testing.assert_close(got, expected)
