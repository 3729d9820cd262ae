"""Image statistics (grpo_guard/image_stats.py) on images whose values are known by construction."""

import math

import pytest
import torch

from grpo_guard.image_stats import (IMAGE_STATS, brightness, colour_entropy, dark_fraction, edge_density,
                                    group_diversity, image_stats, luma, saturation)


def _solid(rgb, side=16):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, side, side).clone()


def test_solid_colours():
    black, white, red = _solid([0, 0, 0]), _solid([1, 1, 1]), _solid([1, 0, 0])
    assert brightness(black).item() == 0 and brightness(white).item() == pytest.approx(1.0)
    assert brightness(red).item() == pytest.approx(0.299)
    assert dark_fraction(black).item() == 1 and dark_fraction(white).item() == 0
    assert saturation(red).item() == pytest.approx(1.0) and saturation(white).item() == 0
    assert saturation(black).item() == 0  # max = 0: no hue, saturation 0 (not NaN)
    for img in (black, white, red):
        assert colour_entropy(img).item() == 0 and edge_density(img).item() == 0


def test_half_split_image():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0  # left half black, right half white
    assert brightness(x).item() == pytest.approx(0.5)
    assert dark_fraction(x).item() == pytest.approx(0.5)
    assert colour_entropy(x).item() == pytest.approx(1.0)  # two colours, equally frequent: one bit
    # the vertical edge: the two columns beside it have gradient magnitude 1 (a step of 1), the rest 0
    assert edge_density(x).item() == pytest.approx(2 / 8)
    assert edge_density(x, threshold=0.99).item() == pytest.approx(2 / 8)
    assert edge_density(x, threshold=1.01).item() == 0


def test_grey_images_equal_their_rgb_repeat():
    g = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    rgb = g.expand(-1, 3, -1, -1)
    torch.testing.assert_close(luma(g), luma(rgb))
    for fn in (brightness, dark_fraction, edge_density):
        torch.testing.assert_close(fn(g), fn(rgb))
    assert float(saturation(g).abs().max()) == 0 and float(saturation(rgb).abs().max()) < 1e-6


def test_entropy_of_noise_approaches_its_maximum():
    noise = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    h = colour_entropy(noise)
    assert h.shape == (2,) and bool((h > 8.9).all()) and bool((h <= 9.0 + 1e-5).all())  # log2(512) = 9
    assert colour_entropy(noise, bins=2).max().item() <= 3.0 + 1e-6


def test_group_diversity():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(1, 3, 8, 8, generator=g)
    same = a.expand(4, -1, -1, -1)
    assert group_diversity(same, torch.tensor([0, 0, 1, 1])) == 0.0  # collapsed samples
    pair = torch.cat([torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)])
    assert group_diversity(pair, torch.tensor([0, 0])) == pytest.approx(1.0)  # RMS distance of 0 vs 1
    assert math.isnan(group_diversity(pair, torch.tensor([0, 1])))  # no group with two images
    big = torch.rand(2, 3, 64, 64, generator=g)  # reduced to 32 px before comparing
    assert 0 < group_diversity(big, torch.tensor([5, 5])) < 0.5


def test_image_stats_and_bad_input():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    st = image_stats(x, torch.tensor([0, 0, 1, 1]))
    assert set(st) == set(IMAGE_STATS) | {"group_diversity"}
    assert st["brightness"] == pytest.approx(float(brightness(x).mean()))
    assert "group_diversity" not in image_stats(x)
    for bad in (torch.rand(2, 2, 8, 8), torch.rand(3, 8, 8)):
        with pytest.raises(ValueError, match="images"):
            brightness(bad)
    with pytest.raises(ValueError, match="group_ids"):
        group_diversity(x, torch.tensor([0, 1]))
