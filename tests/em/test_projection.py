"""Fourier-slice projection against analytic line integrals, and its adjoint."""

from __future__ import annotations

import math

import pytest
import torch

from cryostack.em.fourier import rfft2_centred
from cryostack.em.projection import (
    extract_central_slices,
    insert_central_slices,
    prepare_volume_for_projection,
    project_volume,
)
from cryostack.em.rotations import euler_to_matrix, random_rotations

N = 48
SIGMA = 2.5
CENTRE = torch.tensor([5.0, -3.0, 7.0])  # (x, y, z) px from N // 2


def gaussian_volume(n: int, centre: torch.Tensor, sigma: float) -> torch.Tensor:
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return torch.exp(-r2 / (2 * sigma**2))


def gaussian_image(n: int, centre_xy: torch.Tensor, sigma: float) -> torch.Tensor:
    """Line integral along z of the unit-height 3D Gaussian."""
    c = torch.arange(n, dtype=torch.float32) - n // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    r2 = (x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2
    return math.sqrt(2 * math.pi) * sigma * torch.exp(-r2 / (2 * sigma**2))


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


@pytest.mark.parametrize("interpolation", ["trilinear", "nearest"])
def test_projection_of_off_centre_gaussian_matches_analytic(interpolation: str) -> None:
    angles = torch.tensor(
        [[0.0, 0.0, 0.0], [30.0, 40.0, 50.0], [100.0, 80.0, -20.0], [-60.0, 150.0, 10.0]]
    )
    rotations = euler_to_matrix(angles)
    images = project_volume(
        gaussian_volume(N, CENTRE, SIGMA),
        rotations,
        interpolation=interpolation,  # type: ignore[arg-type]
    )
    assert images.shape == (4, N, N)
    for image, a in zip(images, rotations, strict=True):
        centre_image = a @ CENTRE  # map frame -> image frame; image shows (x, y)
        expected = gaussian_image(N, centre_image[:2], SIGMA)
        # nearest-neighbour slices are much cruder than trilinear ones
        assert correlation(image, expected) > (0.9999 if interpolation == "trilinear" else 0.97)
        # intensity is the line integral in voxel units (within the gridding approximation)
        assert abs(image.sum().item() / expected.sum().item() - 1) < 0.05
        if interpolation == "trilinear":
            assert (image - expected).abs().max() < 0.05 * expected.max()


def test_projection_along_z_of_rotated_volume_matches_pose() -> None:
    # identity projection = sum over z (exact, no interpolation off-grid)
    g = torch.Generator().manual_seed(0)
    vol = gaussian_volume(32, torch.tensor([3.0, -2.0, 4.0]), 2.0)
    vol = vol + 0.5 * gaussian_volume(32, torch.tensor([-5.0, 4.0, -1.0]), 1.5)
    ident = project_volume(vol, torch.eye(3))
    assert correlation(ident, vol.sum(0)) > 0.9999
    # a 90 degree tilt about y: projecting with A equals summing the map along the rotated axis
    a = euler_to_matrix(torch.tensor([0.0, 90.0, 0.0]))  # image x = -map z, image y = map y
    image = project_volume(vol, a)
    along_x = vol.sum(2)  # (z, y) -> need (y, x_img) with x_img = -z
    expected = torch.flip(along_x.T, dims=(1,))
    expected = torch.roll(expected, shifts=1, dims=1)  # flip about index N//2, not (N-1)/2
    assert correlation(image, expected) > 0.999
    # several poses at once give the same as one at a time
    rots = random_rotations(3, generator=g)
    batch = project_volume(vol, rots.reshape(3, 1, 3, 3))
    assert batch.shape == (3, 1, 32, 32)
    single = project_volume(vol, rots[1])
    assert torch.allclose(batch[1, 0], single, atol=1e-5)


def test_insert_is_adjoint_of_extract() -> None:
    g = torch.Generator().manual_seed(3)
    n = 16
    volume_ft = prepare_volume_for_projection(torch.randn(n, n, n, generator=g))
    # make the half volume Hermitian-consistent random data on the qx = 0 plane via a real map
    rotations = random_rotations(5, generator=g)
    images_ft = rfft2_centred(torch.randn(5, n, n, generator=g))
    lhs = extract_central_slices(volume_ft, rotations, n)
    # <extract(V), Y> over the full image spectrum = 2 Re sum over rfft with kx=0 column halved
    weight = torch.ones(n, n // 2 + 1)
    weight[:, 0] = 0.5
    inner_images = (lhs * images_ft.conj() * weight).real.sum()
    accumulated = torch.zeros_like(volume_ft)
    insert_central_slices(images_ft, rotations, accumulated)
    inner_volume = (volume_ft * accumulated.conj()).real.sum()
    assert math.isclose(inner_images.item(), inner_volume.item(), rel_tol=1e-4)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="cubic"):
        project_volume(torch.zeros(8, 8, 9), torch.eye(3))
    with pytest.raises(ValueError, match="3, 3"):
        project_volume(torch.zeros(8, 8, 8), torch.eye(2))
