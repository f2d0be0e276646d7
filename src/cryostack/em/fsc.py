"""Fourier shell (3D) and ring (2D) correlation, and the resolution where they cross a threshold.

Shell convention: a Fourier voxel with spatial frequency ``k`` (cycles/px, from
:func:`cryostack.em.grids.fftfreq_grid_3d`) belongs to shell ``round(|k| · N)`` for a box of ``N``
voxels; shells ``0 .. N // 2`` are returned (voxels beyond Nyquist are ignored). Shell ``i`` has
spatial frequency ``i / (N · pixel_size_A)`` in 1/Å. Sums run over the rfft half of the transform,
as in RELION.
"""

from __future__ import annotations

import torch

from cryostack.em.grids import fftfreq_grid_2d, fftfreq_grid_3d


def shell_indices(shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """Shell index ``round(|k| · N)`` of each rfft voxel of a square/cubic 2D or 3D box.

    Returns:
        ``(H, W // 2 + 1)`` or ``(D, H, W // 2 + 1)`` int64 tensor.
    """
    if len(set(shape)) != 1 or len(shape) not in (2, 3):
        raise ValueError(f"FSC/FRC need a square or cubic box, got {shape}")
    n = shape[0]
    if len(shape) == 2:
        freqs = fftfreq_grid_2d((n, n), rfft=True, device=device)
    else:
        freqs = fftfreq_grid_3d((n, n, n), rfft=True, device=device)
    return torch.round(torch.linalg.vector_norm(freqs, dim=-1) * n).long()


def shell_frequencies(
    box_size: int, pixel_size_A: float = 1.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Spatial frequency of each shell ``0 .. N // 2`` in 1/Å (cycles/px for pixel size 1)."""
    return torch.arange(box_size // 2 + 1, device=device, dtype=torch.float32) / (
        box_size * pixel_size_A
    )


def shell_sums(values: torch.Tensor, shells: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Sum ``values (..., *grid)`` over the shells of ``shells (*grid)`` -> ``(..., n_shells)``.

    Voxels with a shell index ``>= n_shells`` are dropped.
    """
    grid_ndim = shells.ndim
    batch = values.shape[: values.ndim - grid_ndim]
    flat_values = values.reshape(*batch, -1)
    flat_shells = shells.reshape(-1)
    keep = flat_shells < n_shells
    flat_values = flat_values[..., keep]
    index = flat_shells[keep].expand_as(flat_values)
    out = flat_values.new_zeros((*batch, n_shells))
    return out.scatter_add_(-1, index, flat_values)


def _correlation(a: torch.Tensor, b: torch.Tensor, ndim: int) -> torch.Tensor:
    if a.shape != b.shape:
        raise ValueError(f"maps have different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    shape = tuple(a.shape[-ndim:])
    dims = tuple(range(-ndim, 0))
    fa = torch.fft.rfftn(a.float(), dim=dims)
    fb = torch.fft.rfftn(b.float(), dim=dims)
    shells = shell_indices(shape, device=a.device)
    n_shells = shape[0] // 2 + 1
    cross = shell_sums((fa * fb.conj()).real, shells, n_shells)
    power_a = shell_sums(fa.abs() ** 2, shells, n_shells)
    power_b = shell_sums(fb.abs() ** 2, shells, n_shells)
    return cross / torch.sqrt(power_a * power_b).clamp_min(torch.finfo(cross.dtype).tiny)


def fsc(map1: torch.Tensor, map2: torch.Tensor) -> torch.Tensor:
    """Fourier shell correlation of ``(..., N, N, N)`` maps; returns ``(..., N // 2 + 1)``.

    Pair with :func:`shell_frequencies` ``(N, pixel_size_A)`` for the frequency of each shell.
    """
    return _correlation(map1, map2, 3)


def frc(images1: torch.Tensor, images2: torch.Tensor) -> torch.Tensor:
    """Fourier ring correlation of ``(..., N, N)`` images; returns ``(..., N // 2 + 1)``."""
    return _correlation(images1, images2, 2)


def resolution_at_threshold(
    fsc_curve: torch.Tensor, frequencies: torch.Tensor, threshold: float = 0.143
) -> torch.Tensor:
    """Resolution (1 / frequency) where the FSC first falls below ``threshold``.

    The crossing is interpolated linearly in frequency between the last shell at or above the
    threshold and the first shell below it (shell 0 is skipped). When the curve never falls
    below the threshold, the resolution of the last shell (Nyquist) is returned.

    Args:
        fsc_curve: ``(..., n_shells)`` FSC values.
        frequencies: ``(n_shells,)`` shell frequencies in 1/Å (gives Å) or cycles/px (gives px).

    Returns:
        ``(...)`` resolution, in the reciprocal unit of ``frequencies``.
    """
    curve = fsc_curve[..., 1:]
    freqs = frequencies.to(curve)[1:]
    below = curve < threshold
    has_crossing = below.any(dim=-1)
    first = torch.argmax(below.to(torch.int8), dim=-1).clamp_min(1)  # index into curve
    prev = first - 1
    f_lo = torch.gather(curve, -1, prev[..., None])[..., 0]
    f_hi = torch.gather(curve, -1, first[..., None])[..., 0]
    k_lo = freqs[prev]
    k_hi = freqs[first]
    # first shell > 0 already below: crossing between shell 0 (FSC 1) and shell 1
    at_start = below[..., 0]
    f_lo = torch.where(at_start, torch.ones_like(f_lo), f_lo)
    k_lo = torch.where(at_start, frequencies.to(curve)[0].expand_as(k_lo), k_lo)
    k_hi = torch.where(at_start, freqs[0].expand_as(k_hi), k_hi)
    f_hi = torch.where(at_start, curve[..., 0], f_hi)
    t = ((f_lo - threshold) / (f_lo - f_hi).clamp_min(1e-12)).clamp(0.0, 1.0)
    crossing = k_lo + t * (k_hi - k_lo)
    crossing = torch.where(has_crossing, crossing, freqs[-1].expand_as(crossing))
    return 1.0 / crossing
