"""Power spectra of micrographs by averaging periodograms of overlapping tiles (CTF fitting)."""

from __future__ import annotations

import torch

from cryostack.em.fsc import shell_indices, shell_sums


def extract_tiles(micrograph: torch.Tensor, tile_size: int, overlap: float = 0.5) -> torch.Tensor:
    """Overlapping square tiles of ``(..., H, W)`` micrographs.

    Tiles start every ``step = max(1, round(tile_size · (1 - overlap)))`` pixels from the top-left
    corner; incomplete tiles at the right/bottom edges are dropped.

    Returns:
        ``(..., n_tiles, tile_size, tile_size)``.
    """
    h, w = micrograph.shape[-2:]
    if tile_size > min(h, w):
        raise ValueError(f"tile size {tile_size} exceeds micrograph shape {(h, w)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    step = max(1, round(tile_size * (1.0 - overlap)))
    tiles = micrograph.unfold(-2, tile_size, step).unfold(-2, tile_size, step)
    # (..., ny, nx, tile, tile)
    return tiles.reshape(*micrograph.shape[:-2], -1, tile_size, tile_size)


def tile_power_spectrum(
    micrograph: torch.Tensor, tile_size: int, overlap: float = 0.5
) -> torch.Tensor:
    """Average periodogram ``|FFT(tile - mean)|² / tile_size²`` of overlapping tiles.

    For white noise of variance σ² the expected value is σ² at every frequency.

    Args:
        micrograph: ``(..., H, W)`` real.
        tile_size: tile edge in pixels (sets the frequency sampling: ``1 / (tile · pixel_size)``).
        overlap: fractional overlap of neighbouring tiles.

    Returns:
        ``(..., tile, tile // 2 + 1)`` rfft layout, unshifted (frequency 0 at index 0).
    """
    tiles = extract_tiles(micrograph, tile_size, overlap).float()
    tiles = tiles - tiles.mean(dim=(-2, -1), keepdim=True)
    spectra = torch.fft.rfft2(tiles).abs() ** 2 / (tile_size * tile_size)
    return spectra.mean(dim=-3)


def centred_power_spectrum(
    micrograph: torch.Tensor, tile_size: int, overlap: float = 0.5
) -> torch.Tensor:
    """Full ``(..., tile, tile)`` averaged power spectrum with frequency 0 at ``tile // 2`` (for
    display and 2D CTF fitting)."""
    tiles = extract_tiles(micrograph, tile_size, overlap).float()
    tiles = tiles - tiles.mean(dim=(-2, -1), keepdim=True)
    spectra = torch.fft.fft2(tiles).abs() ** 2 / (tile_size * tile_size)
    return torch.fft.fftshift(spectra.mean(dim=-3), dim=(-2, -1))


def radial_average_spectrum(spectrum: torch.Tensor) -> torch.Tensor:
    """Rotational average of an rfft-layout spectrum ``(..., T, T // 2 + 1)``.

    Returns:
        ``(..., T // 2 + 1)``: mean over Fourier rings ``round(|k| · T)`` (k in cycles/px), i.e.
        ring ``i`` has frequency ``i / (T · pixel_size_A)``.
    """
    t = int(spectrum.shape[-2])
    shells = shell_indices((t, t), device=spectrum.device)
    n_shells = t // 2 + 1
    sums = shell_sums(spectrum, shells, n_shells)
    counts = torch.bincount(shells.reshape(-1), minlength=n_shells)[:n_shells]
    return sums / counts.to(sums.dtype).clamp_min(1)
