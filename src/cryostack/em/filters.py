"""Fourier filters (low/high pass, B-factor), rotational averages and normalisation.

Functions working on both images and volumes take ``ndim`` (2 for ``(..., H, W)`` images, 3 for
``(..., D, H, W)`` volumes). Cut-offs are resolutions in Å with the pixel size in Å/px; edges are
raised cosines whose width is given in Fourier shells (1 shell = ``1 / (N · pixel_size_A)``).
"""

from __future__ import annotations

import math

import torch

from cryostack.em.grids import fftfreq_grid_2d, fftfreq_grid_3d


def _frequency_magnitude(
    shape: tuple[int, ...], pixel_size_A: float, device: torch.device
) -> torch.Tensor:
    """|k| in 1/Å on the rfft grid of ``shape`` (2D or 3D)."""
    if len(shape) == 2:
        freqs = fftfreq_grid_2d((shape[0], shape[1]), pixel_size_A, rfft=True, device=device)
    elif len(shape) == 3:
        freqs = fftfreq_grid_3d((shape[0], shape[1], shape[2]), pixel_size_A, device=device)
    else:
        raise ValueError(f"ndim must be 2 or 3, got shape {shape}")
    return torch.linalg.vector_norm(freqs, dim=-1)


def _apply_radial_filter(x: torch.Tensor, ndim: int, filt: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(-ndim, 0))
    shape = tuple(x.shape[-ndim:])
    return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * filt, s=shape, dim=dims)


def _edge_width_invA(
    shape: tuple[int, ...], pixel_size_A: float, edge_width_shells: float
) -> float:
    return edge_width_shells / (max(shape) * pixel_size_A)


def low_pass(
    x: torch.Tensor,
    resolution_A: float,
    pixel_size_A: float,
    *,
    ndim: int,
    edge_width_shells: float = 2.0,
) -> torch.Tensor:
    """Keep frequencies below ``1 / resolution_A``, with a raised-cosine edge centred on it.

    The filter is 1 below ``1/res - w/2`` and 0 above ``1/res + w/2`` (``w`` the edge width).
    """
    shape = tuple(x.shape[-ndim:])
    k = _frequency_magnitude(shape, pixel_size_A, x.device)
    width = _edge_width_invA(shape, pixel_size_A, edge_width_shells)
    cutoff = 1.0 / resolution_A
    if width <= 0:
        filt = (k <= cutoff).to(x.dtype)
    else:
        t = ((k - (cutoff - width / 2)) / width).clamp(0.0, 1.0)
        filt = 0.5 * (1.0 + torch.cos(math.pi * t))
    return _apply_radial_filter(x, ndim, filt.to(x.dtype))


def high_pass(
    x: torch.Tensor,
    resolution_A: float,
    pixel_size_A: float,
    *,
    ndim: int,
    edge_width_shells: float = 2.0,
) -> torch.Tensor:
    """Remove frequencies below ``1 / resolution_A`` (raised-cosine edge); the complement of
    :func:`low_pass`."""
    return x - low_pass(
        x, resolution_A, pixel_size_A, ndim=ndim, edge_width_shells=edge_width_shells
    )


def bfactor_filter(
    x: torch.Tensor, bfactor_A2: float, pixel_size_A: float, *, ndim: int
) -> torch.Tensor:
    """Multiply the transform by ``exp(-B s² / 4)`` (s in 1/Å); a negative B sharpens."""
    shape = tuple(x.shape[-ndim:])
    k = _frequency_magnitude(shape, pixel_size_A, x.device)
    return _apply_radial_filter(x, ndim, torch.exp(-bfactor_A2 * k**2 / 4.0).to(x.dtype))


def radial_index(shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """Integer radius ``round(|r - N // 2|)`` in pixels of each pixel/voxel of a 2D/3D array."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) - n // 2 for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    r2 = torch.zeros_like(grids[0])
    for g in grids:
        r2 = r2 + g**2
    return torch.round(torch.sqrt(r2)).long()


def radial_average(x: torch.Tensor, *, ndim: int) -> torch.Tensor:
    """Rotational average about the centre ``N // 2``: mean over rings/shells of integer radius.

    Args:
        x: ``(..., H, W)`` (``ndim=2``) or ``(..., D, H, W)`` (``ndim=3``) real array.

    Returns:
        ``(..., R)`` mean value at radius ``0 .. R - 1`` px, ``R = max(shape) // 2 + 1``; radii
        beyond are dropped (corners).
    """
    shape = tuple(x.shape[-ndim:])
    radius = radial_index(shape, x.device).reshape(-1)
    n_bins = max(shape) // 2 + 1
    keep = radius < n_bins
    flat = x.reshape(*x.shape[:-ndim], -1)[..., keep]
    index = radius[keep].expand_as(flat)
    sums = flat.new_zeros((*flat.shape[:-1], n_bins)).scatter_add_(-1, index, flat)
    counts = torch.bincount(radius[keep], minlength=n_bins).to(x.dtype)
    return sums / counts.clamp_min(1)


def rotational_average(x: torch.Tensor, *, ndim: int) -> torch.Tensor:
    """Replace each pixel by the mean of its ring/shell (same shape as ``x``; corners get the
    outermost value)."""
    shape = tuple(x.shape[-ndim:])
    profile = radial_average(x, ndim=ndim)
    radius = radial_index(shape, x.device).clamp_max(profile.shape[-1] - 1)
    return profile[..., radius]


def normalise(x: torch.Tensor, *, ndim: int, eps: float = 1e-12) -> torch.Tensor:
    """Zero mean and unit standard deviation over the last ``ndim`` dims of each item."""
    dims = tuple(range(-ndim, 0))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, correction=0)
    return (x - mean) / std.clamp_min(eps)


def normalise_background(
    images: torch.Tensor, background_radius_px: float, eps: float = 1e-12
) -> torch.Tensor:
    """RELION-style particle normalisation: the area outside a circle of radius
    ``background_radius_px`` (centre ``N // 2``) gets zero mean and unit standard deviation.

    Args:
        images: ``(..., H, W)`` real.

    Returns:
        ``(..., H, W)`` normalised images.
    """
    shape = tuple(images.shape[-2:])
    axes = [torch.arange(n, device=images.device, dtype=images.dtype) - n // 2 for n in shape]
    gy, gx = torch.meshgrid(*axes, indexing="ij")
    outside = (gx**2 + gy**2) > background_radius_px**2
    if not bool(outside.any()):
        raise ValueError(f"background radius {background_radius_px} px leaves no background")
    bg = images[..., outside]
    mean = bg.mean(-1)[..., None, None]
    std = bg.std(-1, correction=0)[..., None, None]
    return (images - mean) / std.clamp_min(eps)
