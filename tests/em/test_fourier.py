"""Centred FFTs, sub-pixel phase shifts and Fourier cropping/padding."""

from __future__ import annotations

import math

import torch

from cryostack.em.fourier import (
    fourier_crop,
    fourier_pad,
    irfft2_centred,
    irfft3_centred,
    phase_shift_2d,
    rfft2_centred,
    rfft3_centred,
    shift_images,
)
from cryostack.em.transforms import (
    rotate_images,
    rotation_matrix_2d,
    transform_images,
    translate_images,
)


def gaussian_2d(n: int, x0: float, y0: float, sigma: float) -> torch.Tensor:
    c = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))


def test_centred_fft_of_centred_symmetric_object_is_real() -> None:
    for n in (32, 33):
        ft = rfft2_centred(gaussian_2d(n, 0, 0, 2.0))
        assert ft.imag.abs().max() < 1e-9 * ft.real.abs().max()
        assert torch.allclose(irfft2_centred(ft, (n, n)), gaussian_2d(n, 0, 0, 2.0), atol=1e-12)
    vol = torch.randn(2, 17, 16, 18, dtype=torch.float64)
    assert torch.allclose(irfft3_centred(rfft3_centred(vol), (17, 16, 18)), vol, atol=1e-12)


def test_phase_shift_moves_content_by_plus_shift_subpixel() -> None:
    images = torch.stack([gaussian_2d(48, 0, 0, 2.0), gaussian_2d(48, 1, -2, 3.0)])
    shifts = torch.tensor([[3.25, -1.5], [-4.0, 2.75]], dtype=torch.float64)
    shifted = shift_images(images, shifts)
    expected = torch.stack([gaussian_2d(48, 3.25, -1.5, 2.0), gaussian_2d(48, -3.0, 0.75, 3.0)])
    assert (shifted - expected).abs().max() < 1e-6
    # integer shift equals a roll (x = last axis)
    rolled = torch.roll(images[0], shifts=(2, 5), dims=(0, 1))
    out = shift_images(images[0], torch.tensor([5.0, 2.0], dtype=torch.float64))
    assert torch.allclose(out, rolled, atol=1e-10)
    # a broadcast shift over a batch, on transforms
    ft = phase_shift_2d(rfft2_centred(images), shifts[0], (48, 48))
    assert torch.allclose(irfft2_centred(ft, (48, 48))[0], expected[0], atol=1e-6)


def test_fourier_crop_bins_and_preserves_mean_and_features() -> None:
    fine = gaussian_2d(64, 6, -4, 4.0)[None] + 0.3
    binned = fourier_crop(fine, 32)
    assert binned.shape == (1, 32, 32)
    assert math.isclose(binned.mean().item(), fine.mean().item(), rel_tol=1e-9)
    # the blob is at half the pixel coordinates, with half the sigma
    assert torch.allclose(binned[0], gaussian_2d(32, 3, -2, 2.0) + 0.3, atol=2e-3)
    back = fourier_pad(binned, 64)
    assert torch.allclose(back, fine, atol=2e-3)
    vol = torch.rand(20, 20, 20, dtype=torch.float64)
    assert math.isclose(
        fourier_crop(vol, 10, ndim=3).mean().item(), vol.mean().item(), rel_tol=1e-9
    )


def test_fourier_crop_rejects_growing() -> None:
    try:
        fourier_crop(torch.zeros(8, 8), 16)
    except ValueError as err:
        assert "exceeds" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_real_space_translation_matches_fourier_shift() -> None:
    images = torch.stack([gaussian_2d(40, 2, -3, 3.0), gaussian_2d(40, -4, 1, 2.5)]).float()
    shifts = torch.tensor([[1.5, -2.25], [-3.0, 0.5]])
    bilinear = translate_images(images, shifts)
    fourier = shift_images(images, shifts)
    # bilinear interpolation blurs slightly: compare with a tolerance set by its error
    assert (bilinear - fourier).abs().max() < 0.03
    integer = translate_images(images, torch.tensor([[2.0, -1.0], [0.0, 3.0]]))
    assert torch.allclose(
        integer, shift_images(images, torch.tensor([[2.0, -1.0], [0.0, 3.0]])), atol=1e-5
    )


def test_rotation_by_90_degrees_matches_index_permutation() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 31, 31, generator=g)  # odd size: exact about N // 2
    rotated = rotate_images(images, torch.full((3,), 90.0))
    # content at (x, y) moves to (-y, x): out[x, -y] ... i.e. out[y', x'] = in[x', -y'] (centred)
    expected = torch.flip(images.transpose(-2, -1), dims=(-1,))
    assert torch.allclose(rotated, expected, atol=1e-5)
    back = rotate_images(rotated, torch.full((3,), -90.0))
    assert torch.allclose(back, images, atol=1e-5)
    # combined rotation + shift: a point feature lands where R r + s says
    point = torch.zeros(1, 31, 31)
    point[0, 15 + 0, 15 + 5] = 1.0  # (x, y) = (5, 0) from the centre
    rot = rotation_matrix_2d(torch.tensor([90.0]))
    moved = transform_images(point, rot, torch.tensor([[2.0, 1.0]]))
    # R (5, 0) = (0, 5); plus shift -> (2, 6) -> row 15 + 6, column 15 + 2
    assert moved[0, 21, 17] > 0.999 and math.isclose(moved.sum().item(), 1.0, abs_tol=1e-5)
