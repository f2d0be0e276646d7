"""Tests for cryostack.em.orientation_grids: HEALPix directions x psi, hierarchy, neighbourhoods."""

from __future__ import annotations

import math

import pytest
import torch

from cryostack.em import orientation_grids as og
from cryostack.em import rotations, symmetry


def _angle_deg(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos((u * v).sum(-1).clamp(-1, 1)))


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_pixel_counts_unit_vectors_and_schemes_agree(order: int) -> None:
    nested = og.healpix_directions(order, dtype=torch.float64)
    ring = og.healpix_directions(order, scheme="ring", dtype=torch.float64)
    assert nested.shape == ring.shape == (12 * 4**order, 3)
    torch.testing.assert_close(nested.norm(dim=-1), torch.ones(12 * 4**order, dtype=torch.float64))
    # the same set of pixel centres, each exactly once
    dist = torch.cdist(nested, ring)
    assert dist.min(1).values.max() < 1e-6 and dist.min(0).values.max() < 1e-6
    # equal-area pixels => the centres balance out on the sphere
    assert nested.mean(0).abs().max() < 1e-9


def test_known_healpix_pixel_centres() -> None:
    # RING, Nside 1, pixel 0: z = 2/3, phi = pi/4; NESTED, Nside 2, pixel 0: z = 1/3, phi = pi/4.
    def vec(z: float, phi: float) -> torch.Tensor:
        s = math.sqrt(1 - z * z)
        return torch.tensor([s * math.cos(phi), s * math.sin(phi), z], dtype=torch.float64)

    torch.testing.assert_close(
        og.healpix_directions(0, scheme="ring", dtype=torch.float64)[0], vec(2 / 3, math.pi / 4)
    )
    torch.testing.assert_close(
        og.healpix_directions(1, dtype=torch.float64)[0], vec(1 / 3, math.pi / 4)
    )
    # RING Nside 2, pixel 0 is in the north cap: z = 1 - 1/12, phi = pi/4
    torch.testing.assert_close(
        og.healpix_directions(1, scheme="ring", dtype=torch.float64)[0], vec(11 / 12, math.pi / 4)
    )


@pytest.mark.parametrize("order", [1, 2, 3])
def test_near_uniform_spacing(order: int) -> None:
    d = og.healpix_directions(order, dtype=torch.float64)
    cosines = d @ d.T
    cosines.fill_diagonal_(-2.0)
    nearest = torch.rad2deg(torch.acos(cosines.max(1).values.clamp(-1, 1)))
    step = og.angular_step_deg(order)
    assert step == pytest.approx(58.6323 / 2**order, rel=1e-4)
    assert nearest.min() > 0.8 * step and nearest.max() < 1.05 * step
    assert abs(nearest.mean().item() / step - 0.96) < 0.04


def test_nested_hierarchy_children_surround_parent() -> None:
    parent = og.healpix_directions(2, dtype=torch.float64)
    kids = og.healpix_directions(3, dtype=torch.float64).reshape(-1, 4, 3)
    assert _angle_deg(kids, parent[:, None]).max() < og.angular_step_deg(2) * 0.55
    centroid = kids.mean(1)
    centroid = centroid / centroid.norm(dim=-1, keepdim=True)
    assert _angle_deg(centroid, parent).max() < 1.5


def test_orientation_grid_layout() -> None:
    grid = og.orientation_grid(1, dtype=torch.float64)
    assert grid.shape == (48 * 12, 3)
    mats = rotations.euler_to_matrix(grid)
    directions = og.healpix_directions(1, dtype=torch.float64)
    torch.testing.assert_close(
        rotations.viewing_direction(mats).reshape(48, 12, 3), directions[:, None].expand(48, 12, 3)
    )
    psi = grid.reshape(48, 12, 3)[0, :, 2]
    torch.testing.assert_close(psi, -180 + (torch.arange(12, dtype=torch.float64) + 0.5) * 30)
    assert og.orientation_grid(1, psi_step_deg=10.0).shape == (48 * 36, 3)


@pytest.mark.parametrize("order", [1, 2])
def test_grid_covers_rotations(order: int) -> None:
    """Every rotation has a grid orientation within about one step."""
    grid = rotations.euler_to_matrix(og.orientation_grid(order, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    probes = rotations.random_rotations(300, generator=gen, dtype=torch.float64)
    nearest = rotations.angular_distance_deg(probes[:, None], grid[None]).min(1).values
    step = og.angular_step_deg(order)
    assert nearest.max() < 0.8 * step
    assert nearest.mean() < 0.5 * step


def test_children_indices() -> None:
    coarse = og.orientation_grid(1, dtype=torch.float64)
    fine = og.orientation_grid(2, dtype=torch.float64)
    all_children = og.children(1, torch.arange(coarse.shape[0]))
    assert all_children.shape == (coarse.shape[0], 8)
    # every fine orientation has exactly one parent
    torch.testing.assert_close(
        torch.sort(all_children.flatten()).values, torch.arange(fine.shape[0])
    )
    # children lie around their parent
    parent_m = rotations.euler_to_matrix(coarse)[:, None]
    child_m = rotations.euler_to_matrix(fine[all_children])
    dist = rotations.angular_distance_deg(parent_m, child_m)
    # (near the poles a change of direction also turns rot, hence the in-plane angle)
    assert dist.max() < 1.1 * og.angular_step_deg(1)
    assert dist.mean() < 0.6 * og.angular_step_deg(1)
    with pytest.raises(ValueError, match="must be in"):
        og.children(1, torch.tensor([coarse.shape[0]]))


def test_local_neighbourhood_radius() -> None:
    grid = og.orientation_grid(2, dtype=torch.float64)
    centre = torch.tensor([37.0, 71.0, -120.0], dtype=torch.float64)
    radius = 30.0  # a 30 degree ball is 0.75 % of SO(3): ~35 of 4608 orientations
    idx = og.local_neighbourhood(grid, centre, radius)
    dist = rotations.angular_distance_deg(
        rotations.euler_to_matrix(centre)[None], rotations.euler_to_matrix(grid)
    )
    expected = torch.nonzero(dist <= radius).squeeze(-1)
    torch.testing.assert_close(idx, expected)
    assert 15 < idx.numel() < 70
    assert dist[idx].max() <= radius
    # batched mask gives the same answer
    mask = og.neighbourhood_mask(grid, torch.stack([centre, centre]), radius)
    assert mask.shape == (2, grid.shape[0])
    torch.testing.assert_close(torch.nonzero(mask[1]).squeeze(-1), expected)


def test_symmetry_restricted_grid_and_neighbourhood() -> None:
    full = og.orientation_grid(2, dtype=torch.float64)
    reduced = og.orientation_grid(2, symmetry="D2", dtype=torch.float64)
    assert abs(reduced.shape[0] - full.shape[0] / 4) <= full.shape[0] * 0.03
    gen = torch.Generator().manual_seed(1)
    probes = rotations.random_rotations(100, generator=gen, dtype=torch.float64)
    red_m = rotations.euler_to_matrix(reduced)
    nearest = symmetry.angular_distance_sym_deg(probes[:, None], red_m[None], "D2").min(1).values
    assert nearest.max() < 0.8 * og.angular_step_deg(2)
    # neighbourhood modulo symmetry finds poses near a symmetry mate of the centre
    ops = symmetry.symmetry_matrices("D2", dtype=torch.float64)
    centre = rotations.matrix_to_euler(probes[0] @ ops[3])
    idx = og.local_neighbourhood(reduced, centre, 15.0, symmetry="D2")
    assert idx.numel() > 0
