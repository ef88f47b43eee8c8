"""Occlusion (Fig. 5), invariance (Fig. 4), correspondence (Table 3) and feature evolution (Fig. 3)."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from zf_pipeline.analysis.correspondence import (
    PartImage,
    PartsConfig,
    correspondence,
    in_input_pixels,
    load_parts_config,
    pair_distances,
)
from zf_pipeline.analysis.evolution import feature_evolution, strongest_over
from zf_pipeline.analysis.invariance import invariance_sweep, transform
from zf_pipeline.analysis.occlusion import (
    occlude,
    occlusion_sensitivities,
    occlusion_sensitivity,
    square_positions,
)
from zf_pipeline.deconv import project
from zf_pipeline.models.zfnet import ZFNet, variant


@pytest.fixture(autouse=True)
def no_grad():
    """The analyses never need gradients of the reference computations in these tests."""
    with torch.no_grad():
        yield


def small_net(seed: int = 0) -> ZFNet:
    torch.manual_seed(seed)
    return ZFNet(variant("krizhevsky", width=0.06, num_classes=4, fc_units=64, input_size=67)).double().eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class BrightSpotNet(nn.Sequential):
    """A toy net with a known answer: conv5 map 0 is the brightness; class 0's logit grows with its total."""

    def __init__(self) -> None:
        super().__init__(OrderedDict(conv5=nn.Conv2d(3, 2, 1), relu5=nn.ReLU()))
        with torch.no_grad():
            self.conv5.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1).expand(2, 3, 1, 1) / 3)
            self.conv5.bias.zero_()

    def forward_layers(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        maps = self(x)
        logits = torch.stack([maps[:, 0].sum((1, 2)) - 50.0, torch.zeros(len(x))], 1)
        return {"conv5": maps, "fc8": logits}


def test_occluding_the_bright_region_drops_the_class_and_its_map() -> None:
    image = torch.zeros(3, 32, 32)
    image[:, 8:18, 20:30] = 1.0  # the "object": a 10x10 bright square, 100 units of map 0
    res = occlusion_sensitivity(BrightSpotNet(), image, label=0, size=12, stride=4)
    assert res.channel == 0 and res.base_label == 0 and res.base_prob > 0.99
    obj = np.zeros((32, 32))
    obj[8:18, 20:30] = 1
    for i, y in enumerate(res.ys):
        for j, x in enumerate(res.xs):
            visible = obj.sum() - obj[y : y + 12, x : x + 12].sum()
            assert res.map_activity[i, j] == pytest.approx(visible)
            assert res.true_prob[i, j] == pytest.approx(1 / (1 + np.exp(-(visible - 50.0))), rel=1e-5)
            assert res.top_label[i, j] == (0 if visible > 50 else 1)
    covered = res.top_label == 1
    assert covered.any() and (~covered).any()
    # The projection of map 0's strongest unit (a 1x1 filter) lights exactly that pixel.
    support = np.argwhere(np.abs(res.projection).sum(0) > 0)
    assert support.tolist() == [list(res.unit)]
    assert len(res.rows()) == res.map_activity.size


def test_occlusion_batched_equals_unbatched_and_one_by_one() -> None:
    model = small_net()
    image = randn(3, 67, 67)
    big = occlusion_sensitivity(model, image, label=2, size=16, stride=9, batch_size=1000)
    small = occlusion_sensitivity(model, image, label=2, size=16, stride=9, batch_size=5)
    for name in ("map_activity", "true_prob", "top_label", "projection"):
        np.testing.assert_allclose(getattr(big, name), getattr(small, name), rtol=1e-10)
    i, j = 2, 4
    y, x = big.ys[i], big.xs[j]
    one = image.clone()
    one[:, y : y + 16, x : x + 16] = 0.0
    out = model.forward_layers(one[None], ["conv5", "fc8"])
    assert big.map_activity[i, j] == pytest.approx(float(out["conv5"][0, big.channel].sum()))
    assert big.true_prob[i, j] == pytest.approx(float(out["fc8"][0].softmax(0)[2]))
    act = model.forward_layers(image[None], ["conv5"])["conv5"][0]
    assert act[big.channel].max() == act.flatten(1).max()
    np.testing.assert_allclose(
        big.projection, project(model, image[None], "conv5", [big.channel], [big.unit[0]], [big.unit[1]])[0]
    )


@pytest.mark.parametrize("batch_size", [10, 1000])
def test_occlusion_of_many_images_equals_one_by_one(batch_size: int) -> None:
    """Copies of consecutive images share batches (10 does not divide one image's 37 copies); the
    results are each image's own."""
    model, images, labels = small_net(seed=6), randn(3, 3, 67, 67), [2, 0, 3]  # seed 6: the images pick different maps
    ys, xs = square_positions(67, 67, 16, 9)
    assert (len(ys) * len(xs) + 1) % 10 != 0
    many = occlusion_sensitivities(model, images, labels, size=16, stride=9, batch_size=batch_size)
    assert len(many) == 3
    for image, label, got in zip(images, labels, many):
        want = occlusion_sensitivity(model, image, label, size=16, stride=9, batch_size=batch_size)
        assert (got.label, got.channel, got.unit, got.base_label) == (
            want.label,
            want.channel,
            want.unit,
            want.base_label,
        )
        np.testing.assert_array_equal(got.top_label, want.top_label)
        for name in ("map_activity", "true_prob", "projection", "base_activity", "base_prob"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-12)
    assert len({r.channel for r in many}) > 1 and len({r.unit for r in many}) > 1  # a mix-up would show
    assert occlusion_sensitivities(model, images[:0], [], size=16, stride=9) == []
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        occlusion_sensitivities(model, images, [0, 1], size=16, stride=9)
    with pytest.raises(ValueError, match="labels must lie in"):
        occlusion_sensitivities(model, images, [0, 1, 4], size=16, stride=9)


def test_occlude_paints_each_box_in_its_copy() -> None:
    img = torch.ones(3, 5, 6)
    out = occlude(img, torch.tensor([[0, 0, 2, 3], [4, 1, 6, 5]]), fill=-1.0)
    assert out.shape == (2, 3, 5, 6)
    assert (out[0, :, :3, :2] == -1).all() and (out[0] == -1).sum() == 3 * 6
    assert (out[1, :, 1:5, 4:6] == -1).all() and (out[1] == -1).sum() == 3 * 8
    two = torch.stack([img, 2 * img])
    picked = occlude(
        two, torch.tensor([[0, 0, 2, 3], [4, 1, 6, 5], [1, 1, 2, 2]]), fill=-1.0, index=torch.tensor([1, 0, 1])
    )
    torch.testing.assert_close(picked[:2], torch.stack([torch.where(out[0] == -1, -1.0, 2.0), out[1]]))
    assert (picked[2] == -1).sum() == 3 and (two == -1).sum() == 0  # the source images stay untouched


def test_transforms_keep_the_frame_and_fill_with_the_mean() -> None:
    img = randn(2, 3, 20, 20)
    shifted = transform(img, "translation", 5)
    torch.testing.assert_close(shifted[..., 5:, :], img[..., :15, :])
    assert (shifted[..., :5, :] == 0).all()
    torch.testing.assert_close(transform(img, "rotation", 0), img)
    torch.testing.assert_close(transform(img, "scale", 1.0), img)
    torch.testing.assert_close(transform(img, "rotation", 180), img.flip(-1).flip(-2))
    with pytest.raises(ValueError, match="shear"):
        transform(img, "shear", 1)


def test_invariance_curves_start_at_zero_and_grow() -> None:
    model = small_net()
    imgs = randn(3, 3, 67, 67)
    res = invariance_sweep(model, imgs, [0, 1, 3], "translation", amounts=[0, 4, 16], layers=("conv1", "fc7"))
    probs = model.forward_layers(imgs, ["fc8"])["fc8"].softmax(1)[[0, 1, 2], [0, 1, 3]]
    for layer in ("conv1", "fc7"):
        assert res.distance[layer].shape == (3, 3)
        np.testing.assert_allclose(res.distance[layer][:, 0], 0.0, atol=1e-12)
        assert (res.distance[layer][:, 1:] > 0).all()
    np.testing.assert_allclose(res.true_prob[:, 0], probs.numpy())
    rows = res.rows()
    assert len(rows) == 3 * 3 * 3 and {r["measure"] for r in rows} == {"distance_conv1", "distance_fc7", "true_prob"}
    with pytest.raises(ValueError, match="labels"):
        invariance_sweep(model, imgs, [0], "scale")


class SignsNet(nn.Module):
    """Features = the pixels themselves, so sign(eps) is sign(x) inside the masked box and 0 outside."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward_layers(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        return {layer: x for layer in layers}


def test_correspondence_gives_the_hand_computed_hamming_distance() -> None:
    imgs = torch.full((3, 3, 4, 4), 1.0, dtype=torch.float64)
    imgs[1, 0, 0, 0] = -1.0  # differs from image 0 in 1 of 48 signs
    imgs[2, 1, 1, 1] = imgs[2, 2, 0, 1] = imgs[2, 0, 1, 0] = -1.0  # 3 more, at other positions
    imgs[:, :, 3, 3] = -5.0  # outside the part: never masked, so never a change
    part = {"eye": (0, 0, 2, 2)}
    config = PartsConfig([PartImage(str(i), part) for i in range(3)], random_draws=4, seed=7, parts=("eye",))
    rows = {(r["part"], r["layer"]): r for r in correspondence(SignsNet(), imgs, config, layers=("conv5", "fc7"))}
    expected = np.array([1, 3, 4]) / 48  # pairs (0,1), (0,2), (1,2)
    for layer in ("conv5", "fc7"):
        assert rows[("eye", layer)]["mean"] == pytest.approx(expected.mean())
        assert rows[("eye", layer)]["std"] == pytest.approx(expected.std())
        assert rows[("eye", layer)]["pairs"] == 3
        assert rows[("random", layer)]["pairs"] == 4 * 3
    np.testing.assert_allclose(pair_distances(torch.tensor([[1, 0, -1], [1, 1, -1], [0, 0, 0]])), [1 / 3, 2 / 3, 1.0])


def test_random_masks_have_the_part_size_and_stay_in_the_object() -> None:
    from zf_pipeline.analysis.correspondence import random_boxes

    config = PartsConfig([PartImage("a", {"nose": (2, 3, 7, 5)}, object=(10, 10, 20, 30))], parts=("nose",))
    rng = np.random.default_rng(0)
    boxes = torch.stack([random_boxes(config, "nose", 40, 40, rng)[0] for _ in range(50)])
    assert ((boxes[:, 2] - boxes[:, 0]) == 5).all() and ((boxes[:, 3] - boxes[:, 1]) == 2).all()
    assert (
        (boxes[:, 0] >= 10).all()
        and (boxes[:, 2] <= 20).all()
        and (boxes[:, 1] >= 10).all()
        and (boxes[:, 3] <= 30).all()
    )
    assert len({tuple(b.tolist()) for b in boxes}) > 5


def test_parts_config_loads_and_rejects_bad_files(tmp_path: Path) -> None:
    good = {
        "images": [
            {"path": "dogs/a.jpg", "parts": {"nose": [1, 2, 5, 6], "left_eye": [0, 0, 2, 2]}},
            {
                "image_id": "n02102040/x",
                "parts": {"left_eye": [1, 1, 3, 3], "nose": [2, 2, 4, 4]},
                "object": [0, 0, 8, 8],
            },
        ],
        "random_draws": 3,
    }
    path = tmp_path / "parts.json"
    path.write_text(json.dumps(good))
    config = load_parts_config(path)
    assert config.parts == ("nose", "left_eye") and config.random_draws == 3 and config.seed == 0
    assert config.images[0].key == str((tmp_path / "dogs/a.jpg").resolve()) and config.images[0].is_path
    assert config.images[1].key == "n02102040/x" and config.images[1].object == (0, 0, 8, 8)

    bad = json.loads(json.dumps(good))
    bad["images"][1]["parts"].pop("nose")
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"parts\.json: images\[1\].*differ"):
        load_parts_config(path)
    bad = json.loads(json.dumps(good))
    bad["images"][0]["parts"]["nose"] = [5, 2, 1, 6]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"images\[0\]\.parts\.nose.*x0 < x1"):
        load_parts_config(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="parts.json"):
        load_parts_config(path)


def test_boxes_follow_the_resize_and_centre_crop() -> None:
    config = PartsConfig([PartImage("a", {"eye": (26, 46, 50, 70)}, object=(0, 0, 224, 224)),
                          PartImage("b", {"eye": (100, 0, 140, 30)})], parts=("eye",))
    same = in_input_pixels(config, [(224, 224), (300, 200)], resize=224, crop=224)
    assert same.images[0].parts["eye"] == (26, 46, 50, 70)
    # b: 300x200 -> scale 224/200 = 1.12 to 336x224, keep x 56..280: (112-56, 0, 156.8-56 -> 101, 33.6 -> 34)
    assert same.images[1].parts["eye"] == (56, 0, 101, 34)
    net = in_input_pixels(config, [(224, 224), (300, 200)])  # 224 -> 256, centre 224: x * 8/7 - 16
    assert net.images[0].parts["eye"] == (13, 36, 42, 64) and net.images[0].object == (0, 0, 224, 224)
    with pytest.raises(ValueError, match="image b part eye"):
        in_input_pixels(PartsConfig([PartImage("b", {"eye": (0, 0, 10, 10)})], parts=("eye",)), [(400, 100)])


def test_strongest_over_batches_matches_the_whole_set() -> None:
    model = small_net()
    imgs = randn(10, 3, 67, 67)
    s = strongest_over(model, (imgs[i : i + 3] for i in range(0, 10, 3)), "conv2", [0, 3, 5])
    act = model.forward_layers(imgs, ["conv2"])["conv2"]
    for k, c in enumerate([0, 3, 5]):
        best = act[:, c].flatten(1).max(1).values
        assert int(s.image_index[k]) == int(best.argmax())
        assert float(s.values[k]) == pytest.approx(float(best.max()))
        assert act[s.image_index[k], c, s.ys[k], s.xs[k]] == best.max()
        torch.testing.assert_close(s.images[k], imgs[s.image_index[k]])


def test_feature_evolution_has_one_column_per_checkpoint() -> None:
    imgs = randn(4, 3, 67, 67)
    checkpoints = [(1, small_net(seed=1)), (5, small_net(seed=2))]
    visits = []
    evos = feature_evolution(((e, visits.append(e) or m) for e, m in checkpoints), lambda: [imgs[:2], imgs[2:]],
                             {"conv1": [0, 1, 2], "conv2": [4]})
    assert visits == [1, 5]  # each checkpoint loaded once for all layers
    evo = evos["conv1"]
    assert (
        evo.projections.shape == (3, 2, 3, 67, 67)
        and evo.epochs == [1, 5]
        and evos["conv2"].projections.shape[:2] == (1, 2)
    )
    s = strongest_over(checkpoints[1][1], [imgs], "conv1", [0, 1, 2])
    torch.testing.assert_close(
        evo.projections[:, 1], project(checkpoints[1][1], s.images, "conv1", [0, 1, 2], s.ys, s.xs).float()
    )


SHIPPED_PARTS = Path(__file__).resolve().parents[1] / "docs" / "table3_parts_imagenette.json"


def test_shipped_parts_config_is_valid() -> None:
    config = load_parts_config(SHIPPED_PARTS)
    assert len(config.images) == 5 and config.parts == ("right_eye", "left_eye", "nose")
    for img in config.images:
        assert not img.is_path and img.object is not None
        for x0, y0, x1, y1 in img.parts.values():
            ox0, oy0, ox1, oy1 = img.object
            assert ox0 <= x0 and x1 <= ox1 <= 224 and oy0 <= y0 and y1 <= oy1 <= 224


@pytest.mark.realdata
def test_correspondence_on_the_shipped_springer_faces(shared_data: Path) -> None:
    from PIL import Image

    config = load_parts_config(SHIPPED_PARTS)
    tensors = []
    for img in config.images:
        path = shared_data / "imagenette" / "val" / f"{img.key}.JPEG"
        with Image.open(path) as im:
            assert im.size == (224, 224), f"{path}: the part boxes assume 224x224 images"
            x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
        tensors.append(x - x.mean((1, 2), keepdim=True))
    torch.manual_seed(0)
    model = ZFNet(variant("krizhevsky", width=0.1, num_classes=10, fc_units=128)).eval()
    rows = correspondence(model, torch.stack(tensors), config)
    assert {(r["part"], r["layer"]) for r in rows} == {
        (p, lay) for p in (*config.parts, "random") for lay in ("conv5", "fc7")
    }
    for r in rows:
        assert 0.0 < r["mean"] < 1.0 and r["std"] >= 0.0
        assert r["pairs"] == (10 if r["part"] != "random" else 10 * 3 * 10)
