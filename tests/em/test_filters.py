"""Low/high-pass, B-factor filters, rotational averages, normalisation."""

from __future__ import annotations

import math

import torch

from cryostack.em.filters import (
    bfactor_filter,
    high_pass,
    low_pass,
    normalise,
    normalise_background,
    radial_average,
    rotational_average,
)


def cosine_image(n: int, cycles: int) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float64)
    return torch.cos(2 * math.pi * cycles * x / n).expand(n, n).clone()


def test_low_and_high_pass_split_frequencies() -> None:
    n, pixel = 64, 2.0
    low = cosine_image(n, 4)  # 4 / (64 * 2) = 1/32 per Å
    high = cosine_image(n, 20)  # 1/6.4 per Å
    image = low + high
    assert torch.allclose(low_pass(image, 10.0, pixel, ndim=2), low, atol=1e-9)
    assert torch.allclose(high_pass(image, 10.0, pixel, ndim=2), high, atol=1e-9)
    # on the edge: a frequency exactly at the cut-off is halved
    edge = cosine_image(n, 8)  # 1/16 per Å
    assert torch.allclose(low_pass(edge, 16.0, pixel, ndim=2), 0.5 * edge, atol=1e-9)
    vol = torch.randn(2, 16, 16, 16, dtype=torch.float64)
    assert low_pass(vol, 4.0, 1.0, ndim=3).shape == (2, 16, 16, 16)


def test_bfactor_filter_scales_by_exp_minus_b_s2_over_4() -> None:
    n, pixel, b = 64, 1.5, 100.0
    image = cosine_image(n, 10)
    s = 10 / (n * pixel)
    blurred = bfactor_filter(image, b, pixel, ndim=2)
    assert torch.allclose(blurred, image * math.exp(-b * s * s / 4), atol=1e-9)
    sharpened = bfactor_filter(blurred, -b, pixel, ndim=2)
    assert torch.allclose(sharpened, image, atol=1e-9)


def test_radial_and_rotational_average() -> None:
    n = 33
    c = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    r = torch.sqrt(x**2 + y**2)
    profile = radial_average(torch.stack([r, 2 * r]), ndim=2)
    assert profile.shape == (2, 17)
    assert profile[0, 0] == 0 and abs(profile[0, 10].item() - 10) < 0.2
    assert torch.allclose(profile[1], 2 * profile[0])
    # a rotationally symmetric image is unchanged (up to ring rounding)
    g = torch.exp(-(r**2) / 200)
    inside = r <= 16  # corners take the outermost ring's value
    assert (rotational_average(g, ndim=2) - g)[inside].abs().max() < 0.04
    vol = torch.ones(16, 16, 16)
    assert torch.allclose(radial_average(vol, ndim=3), torch.ones(9))


def test_normalisation() -> None:
    gen = torch.Generator().manual_seed(0)
    images = 3 + 5 * torch.randn(4, 32, 32, generator=gen, dtype=torch.float64)
    out = normalise(images, ndim=2)
    assert torch.allclose(out.mean((-2, -1)), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.std((-2, -1), correction=0), torch.ones(4, dtype=torch.float64))
    images[:, 8:24, 8:24] += 100.0  # a bright particle must not affect background statistics
    bg = normalise_background(images, background_radius_px=12.0)
    corner = bg[:, :4, :4]
    assert corner.mean().abs() < 0.5 and 0.5 < corner.std() < 1.5
    assert bg[:, 16, 16].min() > 15
