"""Frequency and coordinate grids shared by the Fourier-space operations.

Layout conventions for all of :mod:`cryostack.em`:

- images are ``(..., H, W)`` with H rows (y) and W columns (x);
- volumes are ``(..., D, H, W)`` = (z, y, x);
- coordinate vectors are ordered (x, y) or (x, y, z);
- the real-space origin (rotation centre) is at index ``N // 2`` along each axis, as in RELION;
- Fourier arrays use torch's unshifted FFT ordering; ``rfft`` grids keep ``W // 2 + 1`` columns.
"""

from __future__ import annotations

import torch


def fftfreq_grid_2d(
    shape: tuple[int, int],
    pixel_size_A: float = 1.0,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Spatial frequencies of a 2D FFT grid.

    Args:
        shape: image shape (H, W) in pixels.
        pixel_size_A: pixel size in Å/px; frequencies come out in 1/Å (1.0 gives cycles/px).
        rfft: grid for ``torch.fft.rfftn`` (W // 2 + 1 columns) instead of the full FFT.

    Returns:
        ``(H, W', 2)`` tensor of (kx, ky) in 1/Å, unshifted FFT order.
    """
    h, w = shape
    ky = torch.fft.fftfreq(h, d=pixel_size_A, device=device, dtype=dtype)
    kx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(
        w, d=pixel_size_A, device=device, dtype=dtype
    )
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def fftfreq_grid_3d(
    shape: tuple[int, int, int],
    pixel_size_A: float = 1.0,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Spatial frequencies of a 3D FFT grid.

    Args:
        shape: volume shape (D, H, W) in voxels.
        pixel_size_A: voxel size in Å; frequencies come out in 1/Å (1.0 gives cycles/voxel).
        rfft: grid for ``torch.fft.rfftn`` (W // 2 + 1 columns) instead of the full FFT.

    Returns:
        ``(D, H, W', 3)`` tensor of (kx, ky, kz) in 1/Å, unshifted FFT order.
    """
    d, h, w = shape
    kz = torch.fft.fftfreq(d, d=pixel_size_A, device=device, dtype=dtype)
    ky = torch.fft.fftfreq(h, d=pixel_size_A, device=device, dtype=dtype)
    kx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(
        w, d=pixel_size_A, device=device, dtype=dtype
    )
    gz, gy, gx = torch.meshgrid(kz, ky, kx, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1)
