"""Hierarchical orientation grids: HEALPix viewing directions times in-plane psi (like RELION).

- Order ``k`` uses HEALPix ``Nside = 2^k``: ``12 * 4^k`` equal-area direction pixels, spacing
  ``angular_step_deg(k) = sqrt(4 pi / N_pix)`` (58.6 deg at order 0, 7.3 deg at order 3), and by
  default ``6 * 2^k`` psi samples (step 60 / 2^k deg, as RELION).
- Directions use the NESTED scheme (hierarchical: pixel ``p`` of order ``k`` has children
  ``4p .. 4p + 3`` at order ``k + 1``); the RING scheme is available for checks.
- A direction ``d`` becomes RELION angles ``rot = atan2(d_y, d_x)``, ``tilt = acos(d_z)`` (``d`` is
  the viewing direction, row 2 of ``A``). Psi samples are at ``-180 + (j + 1/2) * step`` so that
  psi samples nest too: sample ``j`` has children ``2j, 2j + 1`` at the next order.
- Orientation index in the full (C1) grid of an order: ``direction_index * n_psi + psi_index``.

Everything is computed on the requested device without Python loops over pixels.
"""

from __future__ import annotations

import math

import torch

from cryostack.em.rotations import euler_to_matrix, rotation_angle_rad
from cryostack.em.symmetry import angular_distance_sym_deg, asymmetric_unit_mask

_JRLL = (2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4)
_JPLL = (1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7)


def _check_order(order: int) -> int:
    if not 0 <= order <= 13:
        raise ValueError(f"HEALPix order must be in 0..13, got {order}")
    return 1 << order


def n_directions(order: int) -> int:
    """Number of HEALPix pixels (directions) at an order: ``12 * 4^order``."""
    return 12 * _check_order(order) ** 2


def n_psi(order: int) -> int:
    """Default number of in-plane psi samples at an order: ``6 * 2^order``."""
    return 6 * _check_order(order)


def angular_step_deg(order: int) -> float:
    """Mean direction spacing in degrees, ``sqrt(4 pi / N_pix)`` (58.63 / 2^order)."""
    return math.degrees(math.sqrt(4.0 * math.pi / n_directions(order)))


def _z_phi_to_vec(z: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    sin_theta = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    return torch.stack([sin_theta * torch.cos(phi), sin_theta * torch.sin(phi), z], dim=-1)


def _pix2vec_nested(nside: int, pix: torch.Tensor) -> torch.Tensor:
    npface = nside * nside
    face = pix // npface
    ipf = pix % npface
    # De-interleave the bits of ipf: even bits -> ix, odd bits -> iy.
    ix = torch.zeros_like(pix)
    iy = torch.zeros_like(pix)
    for bit in range(max(nside.bit_length() - 1, 0)):
        ix |= ((ipf >> (2 * bit)) & 1) << bit
        iy |= ((ipf >> (2 * bit + 1)) & 1) << bit
    jrll = torch.tensor(_JRLL, device=pix.device)[face]
    jpll = torch.tensor(_JPLL, device=pix.device)[face]
    jr = jrll * nside - ix - iy - 1  # ring number, 1 .. 4 nside - 1
    north = jr < nside
    south = jr > 3 * nside
    nr = torch.where(north, jr, torch.where(south, 4 * nside - jr, torch.full_like(jr, nside)))
    nr_f = nr.to(torch.float64)
    z_cap = 1.0 - nr_f * nr_f / (3.0 * nside * nside)
    z_eq = (2 * nside - jr).to(torch.float64) * (2.0 / (3.0 * nside))
    z = torch.where(north, z_cap, torch.where(south, -z_cap, z_eq))
    kshift = torch.where(north | south, torch.zeros_like(jr), (jr - nside) & 1)
    jp = (jpll * nr + ix - iy + 1 + kshift) // 2
    jp = torch.where(jp > 4 * nr, jp - 4 * nr, jp)
    jp = torch.where(jp < 1, jp + 4 * nr, jp)
    phi = (jp.to(torch.float64) - (kshift.to(torch.float64) + 1.0) * 0.5) * (math.pi / 2.0 / nr_f)
    return _z_phi_to_vec(z, phi)


def _pix2vec_ring(nside: int, pix: torch.Tensor) -> torch.Tensor:
    npix = 12 * nside * nside
    ncap = 2 * nside * (nside - 1)
    p = pix.to(torch.float64)
    # north polar cap
    i_n = torch.floor((1.0 + torch.sqrt(1.0 + 2.0 * p)) / 2.0)
    j_n = p + 1.0 - 2.0 * i_n * (i_n - 1.0)
    z_n = 1.0 - i_n * i_n / (3.0 * nside * nside)
    phi_n = math.pi / (2.0 * i_n) * (j_n - 0.5)
    # equatorial belt
    pe = p - ncap
    i_e = torch.floor(pe / (4 * nside)) + nside
    j_e = torch.remainder(pe, 4 * nside) + 1.0
    s = torch.remainder(i_e - nside + 1.0, 2.0)
    z_e = 4.0 / 3.0 - 2.0 * i_e / (3.0 * nside)
    phi_e = math.pi / (2.0 * nside) * (j_e - s / 2.0)
    # south polar cap
    ps = npix - p
    i_s = torch.floor((1.0 + torch.sqrt((2.0 * ps - 1.0).clamp_min(0.0))) / 2.0)
    j_s = 4.0 * i_s + 1.0 - (ps - 2.0 * i_s * (i_s - 1.0))
    z_s = -1.0 + i_s * i_s / (3.0 * nside * nside)
    phi_s = math.pi / (2.0 * i_s.clamp_min(1.0)) * (j_s - 0.5)
    north = pix < ncap
    south = pix >= npix - ncap
    z = torch.where(north, z_n, torch.where(south, z_s, z_e))
    phi = torch.where(north, phi_n, torch.where(south, phi_s, phi_e))
    return _z_phi_to_vec(z, phi)


def healpix_directions(
    order: int,
    scheme: str = "nested",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unit vectors of the HEALPix pixel centres at an order (``Nside = 2^order``).

    Args:
        order: HEALPix order (0..13).
        scheme: ``"nested"`` (hierarchical, default) or ``"ring"`` pixel numbering.

    Returns:
        ``(12 * 4^order, 3)`` (x, y, z) unit vectors.
    """
    nside = _check_order(order)
    pix = torch.arange(12 * nside * nside, device=device, dtype=torch.long)
    if scheme == "nested":
        vec = _pix2vec_nested(nside, pix)
    elif scheme == "ring":
        vec = _pix2vec_ring(nside, pix)
    else:
        raise ValueError(f"scheme must be 'nested' or 'ring', got {scheme!r}")
    return vec.to(dtype)


def directions_to_euler(directions: torch.Tensor) -> torch.Tensor:
    """Viewing directions ``(..., 3)`` to RELION ``(..., 2)`` ``[rot, tilt]`` in degrees."""
    d = directions.to(torch.float64)
    rot = torch.atan2(d[..., 1], d[..., 0])
    tilt = torch.acos(d[..., 2].clamp(-1.0, 1.0))
    return torch.rad2deg(torch.stack([rot, tilt], dim=-1)).to(directions.dtype)


def psi_samples_deg(
    order: int,
    psi_step_deg: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """In-plane angles ``-180 + (j + 1/2) * step`` in degrees, ``(n_psi,)``.

    The default step is ``360 / (6 * 2^order)``; a given ``psi_step_deg`` is rounded so that a
    whole number of steps fills 360 degrees.
    """
    count = n_psi(order) if psi_step_deg is None else max(1, round(360.0 / psi_step_deg))
    step = 360.0 / count
    j = torch.arange(count, device=device, dtype=torch.float64)
    return (-180.0 + (j + 0.5) * step).to(dtype)


def orientation_grid(
    order: int,
    psi_step_deg: float | None = None,
    symmetry: str = "C1",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All orientations of an order: HEALPix directions times psi samples.

    Args:
        order: HEALPix order.
        psi_step_deg: in-plane step in degrees (default matches the order, 60 / 2^order).
        symmetry: point group; directions are restricted to an asymmetric unit
            (:func:`cryostack.em.symmetry.asymmetric_unit_mask`), psi keeps the full circle.

    Returns:
        ``(M, 3)`` RELION ``[rot, tilt, psi]`` in degrees, direction-major (for C1 and the default
        psi step, row ``direction_index * n_psi + psi_index`` with NESTED direction indices).
    """
    directions = healpix_directions(order, device=device, dtype=torch.float64)
    if symmetry.strip().upper() != "C1":
        directions = directions[asymmetric_unit_mask(directions, symmetry)]
    rot_tilt = directions_to_euler(directions)
    psi = psi_samples_deg(order, psi_step_deg, device=device, dtype=torch.float64)
    n_dir, n_p = rot_tilt.shape[0], psi.shape[0]
    grid = torch.cat(
        [rot_tilt[:, None, :].expand(n_dir, n_p, 2), psi[None, :, None].expand(n_dir, n_p, 1)],
        dim=-1,
    )
    return grid.reshape(-1, 3).to(dtype)


def children(order: int, indices: torch.Tensor) -> torch.Tensor:
    """Indices at ``order + 1`` of the 8 children of full-grid (C1, default psi) orientations.

    Each orientation (direction pixel ``p``, psi sample ``j``) has the 4 NESTED sub-pixels
    ``4p .. 4p + 3`` and the 2 psi sub-samples ``2j, 2j + 1``.

    Args:
        order: order of ``indices``.
        indices: ``(...)`` long indices into ``orientation_grid(order)``.

    Returns:
        ``(..., 8)`` long indices into ``orientation_grid(order + 1)``.
    """
    n_p = n_psi(order)
    n_total = n_directions(order) * n_p
    if bool(((indices < 0) | (indices >= n_total)).any()):
        raise ValueError(f"orientation indices must be in [0, {n_total}) for order {order}")
    pix, j = indices // n_p, indices % n_p
    sub_pix = 4 * pix[..., None] + torch.arange(4, device=indices.device)  # (..., 4)
    sub_psi = 2 * j[..., None] + torch.arange(2, device=indices.device)  # (..., 2)
    fine = sub_pix[..., :, None] * (2 * n_p) + sub_psi[..., None, :]
    return fine.reshape(*indices.shape, 8)


def neighbourhood_mask(
    grid_euler_deg: torch.Tensor,
    centres_euler_deg: torch.Tensor,
    radius_deg: float,
    symmetry: str = "C1",
) -> torch.Tensor:
    """Which grid orientations are within ``radius_deg`` of each centre.

    The distance is the geodesic rotation angle between the poses (modulo ``symmetry``).

    Args:
        grid_euler_deg: ``(M, 3)`` RELION angles of the grid.
        centres_euler_deg: ``(..., 3)`` RELION angles of the centres.
        radius_deg: search radius in degrees.

    Returns:
        ``(..., M)`` boolean mask.
    """
    grid = euler_to_matrix(grid_euler_deg.to(torch.float64))
    centres = euler_to_matrix(centres_euler_deg.to(torch.float64))[..., None, :, :]
    if symmetry.strip().upper() == "C1":
        rel = centres @ grid.transpose(-1, -2)
        dist = torch.rad2deg(rotation_angle_rad(rel))
    else:
        dist = angular_distance_sym_deg(centres, grid, symmetry)
    return dist <= radius_deg


def local_neighbourhood(
    grid_euler_deg: torch.Tensor,
    centre_euler_deg: torch.Tensor,
    radius_deg: float,
    symmetry: str = "C1",
) -> torch.Tensor:
    """Indices of the grid orientations within ``radius_deg`` of one centre (``(3,)`` angles).

    Returns:
        ``(K,)`` long indices into ``grid_euler_deg``, increasing.
    """
    if centre_euler_deg.shape != (3,):
        raise ValueError(
            f"local_neighbourhood takes one (3,) centre, got {tuple(centre_euler_deg.shape)}; "
            "use neighbourhood_mask for batches"
        )
    mask = neighbourhood_mask(grid_euler_deg, centre_euler_deg, radius_deg, symmetry)
    return torch.nonzero(mask).squeeze(-1)
