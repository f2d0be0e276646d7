"""Soft-edged masks: circles, spheres, and thresholded map masks (like ``relion_mask_create``).

Edges are raised cosines: 1 inside, ``0.5 (1 + cos(π d / width))`` at distance ``d`` outside the
hard boundary (``0 <= d <= width``), 0 beyond. Centres default to index ``N // 2`` per axis.
"""

from __future__ import annotations

import math

import torch


def _raised_cosine(distance_px: torch.Tensor, soft_edge_px: float) -> torch.Tensor:
    """1 for distance <= 0, raised-cosine fall-off to 0 at ``soft_edge_px``."""
    if soft_edge_px <= 0:
        return (distance_px <= 0).to(distance_px.dtype)
    t = (distance_px / soft_edge_px).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def _radius_grid(
    shape: tuple[int, ...],
    center: tuple[float, ...] | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Distance in pixels from ``center`` (given as (x, y[, z]); default ``N // 2``)."""
    if center is None:
        center_zyx = tuple(float(n // 2) for n in shape)
    else:
        center_zyx = tuple(reversed(center))
    axes = [
        torch.arange(n, device=device, dtype=dtype) - c
        for n, c in zip(shape, center_zyx, strict=True)
    ]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))  # type: ignore[arg-type]


def circle_mask(
    shape: tuple[int, int],
    radius_px: float,
    soft_edge_px: float = 0.0,
    center: tuple[float, float] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(H, W)`` soft circular mask of radius ``radius_px``; centre (x, y), default ``N // 2``."""
    r = _radius_grid(shape, center, device, dtype)
    return _raised_cosine(r - radius_px, soft_edge_px)


def sphere_mask(
    shape: tuple[int, int, int],
    radius_px: float,
    soft_edge_px: float = 0.0,
    center: tuple[float, float, float] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(D, H, W)`` soft spherical mask of radius ``radius_px``; centre (x, y, z), default N//2."""
    r = _radius_grid(shape, center, device, dtype)
    return _raised_cosine(r - radius_px, soft_edge_px)


def _ball_kernel_ft(
    shape: tuple[int, int, int], radius_px: float, like: torch.Tensor
) -> torch.Tensor:
    """rfft of a ball of radius ``radius_px`` centred at the origin (index 0, periodic)."""
    r = _radius_grid(shape, None, like.device, torch.float32)
    ball = (r <= radius_px + 1e-6).to(torch.float32)
    return torch.fft.rfftn(torch.fft.ifftshift(ball))


def distance_to_mask(
    binary: torch.Tensor, max_distance_px: float, step_px: float = 0.5
) -> torch.Tensor:
    """Approximate Euclidean distance (px) from each voxel to the nearest True voxel of ``binary``.

    Computed by FFT dilations with balls of growing radius (steps of ``step_px``); voxels
    farther than ``max_distance_px`` get ``inf``. ``binary`` is ``(D, H, W)`` bool.
    """
    shape = tuple(binary.shape)
    if len(shape) != 3:
        raise ValueError(f"distance_to_mask needs a (D, H, W) volume, got {shape}")
    distance = torch.full(shape, math.inf, device=binary.device)
    distance[binary] = 0.0
    source_ft = torch.fft.rfftn(binary.to(torch.float32))
    n_steps = math.ceil(max_distance_px / step_px)
    for i in range(1, n_steps + 1):
        radius = i * step_px
        kernel_ft = _ball_kernel_ft(shape, radius, binary)
        dilated = torch.fft.irfftn(source_ft * kernel_ft, s=shape) > 0.5
        distance = torch.where(dilated & torch.isinf(distance), radius, distance)
    return distance


def mask_from_map(
    volume: torch.Tensor,
    threshold: float,
    *,
    extend_px: float = 0.0,
    soft_edge_px: float = 0.0,
    step_px: float = 0.5,
) -> torch.Tensor:
    """Soft mask from a map, like ``relion_mask_create`` (threshold, extend, soft edge).

    Voxels ``>= threshold`` form the initial mask, which is dilated by ``extend_px`` and then
    given a raised-cosine edge ``soft_edge_px`` wide. Distances are resolved to ``step_px``.

    Args:
        volume: ``(D, H, W)`` real map.
        threshold: density threshold for the initial binary mask.
        extend_px: dilation in pixels.
        soft_edge_px: width of the soft edge in pixels.

    Returns:
        ``(D, H, W)`` mask in [0, 1], same dtype/device as ``volume``.
    """
    binary = volume >= threshold
    if extend_px <= 0 and soft_edge_px <= 0:
        return binary.to(volume.dtype)
    distance = distance_to_mask(binary, extend_px + soft_edge_px, step_px)
    mask = _raised_cosine(distance - extend_px, soft_edge_px)
    return torch.nan_to_num(mask, nan=0.0).to(volume.dtype)
