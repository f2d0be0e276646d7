"""Fourier-slice projection of 3D maps and its adjoint (insertion of central slices).

Convention (``em-conventions.md``): for a rotation matrix ``A`` (RELION's Z-Y-Z Euler matrix,
mapping the map's frame to the image's frame), the projection image is the central slice
``F3D(Aᵀ (kx, ky, 0))`` of the map's Fourier transform, with real-space centres at ``N // 2``.
The projection equals the line integral (sum over voxels) of the map along the image's z axis.

A *prepared* Fourier volume (see :func:`prepare_volume_for_projection`) is the centred rfft of the
map zero-padded to ``M = round(oversampling * N)`` voxels and pre-corrected for the interpolation
kernel (gridding correction), laid out as ``(M, M, M // 2 + 1)`` complex with the z and y
frequency axes shifted so that frequency 0 is at index ``M // 2`` and the x axis holding the
non-negative frequencies ``0 .. M // 2`` (Hermitian half). Frequencies are sampled within the
radius ``N / 2`` (Nyquist) of the image, exclusive.
"""

from __future__ import annotations

from typing import Literal

import torch

from cryostack.em.fourier import irfft2_centred, rfft3_centred
from cryostack.em.grids import fftfreq_grid_2d

Interpolation = Literal["trilinear", "nearest"]


def padded_size(box_size: int, oversampling: float) -> int:
    """Size ``M`` of the padded Fourier volume for a box of ``box_size`` voxels."""
    if oversampling < 1.0:
        raise ValueError(f"oversampling must be >= 1, got {oversampling}")
    return round(box_size * oversampling)


def gridding_correction(
    box_size: int,
    padded: int,
    interpolation: Interpolation = "trilinear",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Real-space apodisation caused by interpolating in a Fourier grid of ``padded`` voxels.

    Trilinear interpolation convolves the Fourier grid with a separable tent, which multiplies
    the (periodic) real-space map by ``sinc²(x / M) sinc²(y / M) sinc²(z / M)`` (``sinc`` for
    nearest neighbour). Divide a map by this before projection, and a reconstruction after it.

    Returns:
        ``(N, N, N)`` real tensor, 1 at the centre ``N // 2``.
    """
    coords = torch.arange(box_size, device=device, dtype=dtype) - box_size // 2
    profile = torch.sinc(coords / padded)
    if interpolation == "trilinear":
        profile = profile**2
    elif interpolation != "nearest":
        raise ValueError(f"unknown interpolation {interpolation!r}")
    return profile[:, None, None] * profile[None, :, None] * profile[None, None, :]


def _check_cube(volume: torch.Tensor) -> int:
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"expected a cubic (D, D, D) volume, got shape {tuple(volume.shape)}")
    return int(volume.shape[0])


def prepare_volume_for_projection(
    volume: torch.Tensor, oversampling: float = 2.0, interpolation: Interpolation = "trilinear"
) -> torch.Tensor:
    """Pad, gridding-correct and Fourier transform a map once for many projections.

    Args:
        volume: ``(D, D, D)`` real map, centre at ``D // 2``.
        oversampling: padding factor of the Fourier volume (2 gives accurate trilinear slices).
        interpolation: the interpolation that will be used to extract slices.

    Returns:
        ``(M, M, M // 2 + 1)`` complex prepared Fourier volume (layout in the module docstring).
    """
    n = _check_cube(volume)
    m = padded_size(n, oversampling)
    correction = gridding_correction(n, m, interpolation, volume.device, volume.dtype)
    padded = volume.new_zeros((m, m, m))
    start = m // 2 - n // 2
    padded[start : start + n, start : start + n, start : start + n] = volume / correction
    volume_ft = rfft3_centred(padded)
    return torch.fft.fftshift(volume_ft, dim=(0, 1)).contiguous()


def _slice_points(
    image_size: int, r_max_px: float | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequencies (kx, ky) of the rfft pixels inside the radius, and their flat index."""
    freqs = fftfreq_grid_2d((image_size, image_size), rfft=True, device=device) * image_size
    radius = image_size / 2 if r_max_px is None else min(r_max_px, image_size / 2)
    inside = (freqs**2).sum(-1).flatten() < radius**2
    flat_index = torch.nonzero(inside).squeeze(-1)
    return freqs.reshape(-1, 2)[flat_index], flat_index


def _volume_coordinates(
    points: torch.Tensor, rotations: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D frequencies ``Aᵀ (kx, ky, 0)`` in padded-grid units, folded onto qx >= 0.

    Returns:
        ``(B, P, 3)`` coordinates (x, y, z) and ``(B, P)`` bool: True where the point was
        mirrored (its value is the complex conjugate of the stored one).
    """
    a = rotations.to(points.dtype) * scale  # (B, 3, 3)
    q = points[None, :, 0, None] * a[:, None, 0, :] + points[None, :, 1, None] * a[:, None, 1, :]
    flipped = q[..., 0] < 0
    q = torch.where(flipped[..., None], -q, q)
    return q, flipped


_GRID_MODES = {"trilinear": 0, "nearest": 1}  # aten grid_sampler interpolation codes


def _sampling_grid(q: torch.Tensor, m: int) -> torch.Tensor:
    """``(1, 1, B * P, 1, 3)`` normalised grid_sample coordinates (align_corners=True) of
    padded-grid frequencies ``q (B, P, 3)`` in a ``(M, M, M // 2 + 1)`` half volume."""
    mx = m // 2 + 1
    grid = torch.stack(
        [
            q[..., 0] * (2.0 / (mx - 1)) - 1.0,
            (q[..., 1] + m // 2) * (2.0 / (m - 1)) - 1.0,
            (q[..., 2] + m // 2) * (2.0 / (m - 1)) - 1.0,
        ],
        dim=-1,
    )
    return grid.reshape(1, 1, -1, 1, 3)


def _mode(interpolation: Interpolation) -> int:
    if interpolation not in _GRID_MODES:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    return _GRID_MODES[interpolation]


def _flatten_rotations(rotations: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    if rotations.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must be (..., 3, 3), got {tuple(rotations.shape)}")
    batch = tuple(rotations.shape[:-2])
    return rotations.reshape(-1, 3, 3), batch


def extract_central_slices(
    volume_ft: torch.Tensor,
    rotations: torch.Tensor,
    image_size: int,
    *,
    interpolation: Interpolation = "trilinear",
    r_max_px: float | None = None,
) -> torch.Tensor:
    """Central slices of a prepared Fourier volume: the centred rfft of projection images.

    Args:
        volume_ft: ``(M, M, M // 2 + 1)`` complex, from :func:`prepare_volume_for_projection`.
        rotations: ``(..., 3, 3)`` matrices ``A`` (map frame -> image frame).
        image_size: box size ``N`` of the images (the unpadded map size); ``M / N`` is the
            oversampling.
        interpolation: "trilinear" or "nearest" (must match the preparation).
        r_max_px: frequency radius in Fourier pixels of the image beyond which the slice is 0
            (default and maximum: ``N / 2``).

    Returns:
        ``(..., N, N // 2 + 1)`` complex: apply :func:`~cryostack.em.fourier.irfft2_centred`
        to get the projections.
    """
    m = int(volume_ft.shape[0])
    rot, batch = _flatten_rotations(rotations.to(volume_ft.device))
    points, flat_index = _slice_points(image_size, r_max_px, volume_ft.device)
    q, flipped = _volume_coordinates(points, rot, m / image_size)
    # (1, 2, M, M, Mx) strided view (no copy); grid_sample honours strides
    channels = torch.view_as_real(volume_ft).permute(3, 0, 1, 2)[None]
    sampled = torch.ops.aten.grid_sampler_3d(
        channels, _sampling_grid(q, m), _mode(interpolation), 0, True
    )  # (1, 2, 1, B * P, 1)
    values = torch.complex(sampled[0, 0, 0, :, 0], sampled[0, 1, 0, :, 0]).reshape(flipped.shape)
    values = torch.where(flipped, values.conj(), values)
    n_pix = image_size * (image_size // 2 + 1)
    out = values.new_zeros((rot.shape[0], n_pix))
    out[:, flat_index] = values
    return out.reshape(*batch, image_size, image_size // 2 + 1)


def insert_central_slices(
    images_ft: torch.Tensor,
    rotations: torch.Tensor,
    data_volume: torch.Tensor,
    *,
    weights_ft: torch.Tensor | None = None,
    weight_volume: torch.Tensor | None = None,
    interpolation: Interpolation = "trilinear",
    r_max_px: float | None = None,
) -> None:
    """Adjoint of :func:`extract_central_slices`: spread image transforms into a Fourier volume.

    Adds in place ``Σ w · F`` to ``data_volume`` and, when given, ``Σ w · weights_ft`` to
    ``weight_volume`` (``w`` the interpolation weights). Only the stored half (qx >= 0) is
    updated; call :func:`complete_hermitian_plane` on the accumulated volumes before using them.

    Args:
        images_ft: ``(..., N, N // 2 + 1)`` complex centred rffts.
        rotations: ``(..., 3, 3)`` matrices ``A``.
        data_volume: ``(M, M, M // 2 + 1)`` complex accumulator (layout of a prepared volume).
        weights_ft: ``(..., N, N // 2 + 1)`` real per-pixel weights (e.g. CTF²), or None.
        weight_volume: ``(M, M, M // 2 + 1)`` real accumulator for ``weights_ft`` (or for 1s
            when ``weights_ft`` is None), or None.
        interpolation: "trilinear" or "nearest".
        r_max_px: frequency radius (image Fourier pixels) to insert, default ``N / 2``.
    """
    image_size = int(images_ft.shape[-2])
    m = int(data_volume.shape[0])
    device = data_volume.device
    rot, _ = _flatten_rotations(rotations.to(device))
    points, flat_index = _slice_points(image_size, r_max_px, device)
    q, flipped = _volume_coordinates(points, rot, m / image_size)
    # the kx = 0 column of an rfft holds each Hermitian pair twice: count each half
    half = torch.where(points[:, 0] == 0, 0.5, 1.0).to(q.dtype)
    values = images_ft.reshape(rot.shape[0], -1)[:, flat_index].to(device)
    values = torch.where(flipped, values.conj(), values) * half
    channels = [values.real, values.imag]
    if weight_volume is not None:
        if weights_ft is None:
            channels.append(half.expand(q.shape[:-1]))
        else:
            weights = weights_ft.reshape(rot.shape[0], -1)[:, flat_index].to(device)
            channels.append(weights.to(q.dtype) * half)
    grad_output = torch.stack(channels).reshape(1, len(channels), 1, -1, 1).to(q.dtype)
    shape_like = torch.empty((1, len(channels), *data_volume.shape), dtype=q.dtype, device=device)
    # the adjoint of trilinear sampling is the input-gradient of grid_sample (fused scatter)
    spread, _ = torch.ops.aten.grid_sampler_3d_backward(
        grad_output, shape_like, _sampling_grid(q, m), _mode(interpolation), 0, True, [True, False]
    )
    data_volume += torch.complex(spread[0, 0], spread[0, 1]).to(data_volume.dtype)
    if weight_volume is not None:
        weight_volume += spread[0, 2].to(weight_volume.dtype)


def complete_hermitian_plane(volume_ft: torch.Tensor) -> torch.Tensor:
    """Make the qx = 0 plane of an accumulated half volume Hermitian.

    Insertion only adds each contribution on the stored side; on the qx = 0 plane the mirror
    partner ``conj(V(0, -y, -z))`` must be added as well. Returns a new tensor.
    """
    out = volume_ft.clone()
    plane = volume_ft[:, :, 0]
    mirrored = torch.roll(torch.flip(plane, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    out[:, :, 0] = plane + (mirrored.conj() if plane.is_complex() else mirrored)
    return out


def project_volume(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    *,
    oversampling: float = 2.0,
    interpolation: Interpolation = "trilinear",
    batch_size: int = 1024,
) -> torch.Tensor:
    """Project a map along the z axis of each pose (Fourier-slice theorem).

    Args:
        volume: ``(D, D, D)`` real map, centre at ``D // 2``.
        rotations: ``(..., 3, 3)`` matrices ``A`` (map frame -> image frame).
        oversampling: padding factor of the Fourier volume.
        interpolation: "trilinear" (default) or "nearest".
        batch_size: images computed at a time (bounds memory).

    Returns:
        ``(..., D, D)`` real projections (line integrals in voxel units), centre at ``D // 2``.
    """
    n = _check_cube(volume)
    volume_ft = prepare_volume_for_projection(volume, oversampling, interpolation)
    rot, batch = _flatten_rotations(rotations)
    chunks = [
        irfft2_centred(
            extract_central_slices(volume_ft, chunk, n, interpolation=interpolation), (n, n)
        )
        for chunk in rot.split(batch_size)
    ]
    images = torch.cat(chunks) if chunks else volume.new_zeros((0, n, n))
    return images.reshape(*batch, n, n)
