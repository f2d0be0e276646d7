"""Local resolution from two half maps by windowed Fourier shell correlation.

Around each point of a regular grid of window centres (every ``step_px`` voxels, the grid
passing through the box centre ``N // 2``) both half maps are cut out in a cube of
``window_px`` voxels, multiplied by a soft spherical window (flat to a quarter of the cube,
raised-cosine fall-off to zero at its half width), zero-padded ``pad_factor`` times (finer shell
sampling of the same information) and compared by FSC. The local resolution of a centre is
where its FSC first falls below the threshold, interpolated between shells (0.143 by default,
as for the global gold-standard FSC: each window compares two independent half maps; 0.5 gives
more conservative values, as in Blocres's default). Values are clamped to the window's own size
(a window cannot measure coarser detail than itself).

The per-voxel map interpolates the centres' local *frequencies* (1/Å) trilinearly, counting
only the centres that were evaluated (inside the mask), and returns their reciprocal in Å.
Windows are processed in batches through one batched FFT, so the work is a few large tensor
operations on the half maps' device. Voxels farther than one step from any evaluated centre get
the worst (largest) resolution found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryostack.em.fsc import fsc, resolution_at_threshold, shell_frequencies
from cryostack.em.masks import sphere_mask


@dataclass(frozen=True)
class LocalResolution:
    """Result of :func:`local_resolution`.

    Attributes:
        resolution_A: ``(N, N, N)`` local resolution per voxel, Å.
        centres_zyx: ``(n, 3)`` int64 voxel indices (z, y, x) of the evaluated window centres.
        centre_resolution_A: ``(n,)`` local resolution at each evaluated centre, Å.
        window_px: window size used (voxels).
        step_px: grid step used (voxels).
        threshold: FSC threshold used.
    """

    resolution_A: torch.Tensor
    centres_zyx: torch.Tensor
    centre_resolution_A: torch.Tensor
    window_px: int
    step_px: int
    threshold: float


def grid_axis(box_px: int, step_px: int) -> torch.Tensor:
    """Window-centre coordinates along one axis: ``N // 2 + k · step`` inside ``0 .. N - 1``."""
    offset = (box_px // 2) % step_px
    return torch.arange(offset, box_px, step_px)


def soft_window(window_px: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(w, w, w)`` soft sphere: 1 within ``w / 4`` of voxel ``w // 2``, 0 beyond ``w / 2``."""
    quarter = window_px / 4.0
    return sphere_mask((window_px,) * 3, quarter, soft_edge_px=quarter, device=device)


def _windows(volume: torch.Tensor, window_px: int, step_px: int) -> torch.Tensor:
    """View ``(G, G, G, w, w, w)`` of the cubes centred on the grid of :func:`grid_axis`.

    The volume is extended periodically (maps from Fourier methods are periodic).
    """
    n = int(volume.shape[-1])
    half = window_px // 2
    padded = F.pad(volume[None, None], (half,) * 6, mode="circular")[0, 0]
    offset = (n // 2) % step_px
    padded = padded[offset:, offset:, offset:]
    count = len(grid_axis(n, step_px))
    view = padded
    for dim in range(3):
        view = view.unfold(dim, window_px, step_px)
    return view[:count, :count, :count]


def windowed_fsc_resolution(
    windows1: torch.Tensor,
    windows2: torch.Tensor,
    taper: torch.Tensor,
    pixel_size_A: float,
    threshold: float,
    pad_factor: int,
) -> torch.Tensor:
    """Resolution (Å) of the FSC of tapered ``(n, w, w, w)`` window pairs -> ``(n,)``."""
    w = int(windows1.shape[-1])
    size = pad_factor * w
    pad = (size - w) // 2
    padding = (pad, size - w - pad) * 3
    a = F.pad(windows1 * taper, padding)
    b = F.pad(windows2 * taper, padding)
    curves = fsc(a, b)
    freqs = shell_frequencies(size, pixel_size_A, device=a.device)
    return resolution_at_threshold(curves, freqs, threshold)


def _interpolate_to_voxels(
    grid_values: torch.Tensor, valid: torch.Tensor, box_px: int, step_px: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear interpolation of ``(G, G, G)`` grid values to ``(N, N, N)``, over valid points.

    Returns ``(values, support)``; ``support`` is the interpolated fraction of valid neighbours.
    """
    axis = grid_axis(box_px, step_px).to(grid_values.device, torch.float32)
    count = axis.numel()
    coords = torch.arange(box_px, device=grid_values.device, dtype=torch.float32)
    span = max(float(axis[-1] - axis[0]), 1.0)
    normalised = 2.0 * (coords - axis[0]) / span - 1.0 if count > 1 else coords * 0
    gz, gy, gx = torch.meshgrid(normalised, normalised, normalised, indexing="ij")
    sample = torch.stack([gx, gy, gz], dim=-1)[None]
    stacked = torch.stack([grid_values * valid, valid.to(grid_values.dtype)])[None]
    out = F.grid_sample(stacked, sample, mode="bilinear", padding_mode="border", align_corners=True)
    numerator, support = out[0, 0], out[0, 1]
    return numerator / support.clamp_min(1e-12), support


def local_resolution(
    half1: torch.Tensor,
    half2: torch.Tensor,
    pixel_size_A: float,
    *,
    mask: torch.Tensor | None = None,
    window_px: int = 20,
    step_px: int = 3,
    threshold: float = 0.143,
    pad_factor: int = 1,
    batch_size: int = 512,
    mask_threshold: float = 0.01,
) -> LocalResolution:
    """Local resolution map of two ``(N, N, N)`` half maps by windowed FSC.

    Args:
        half1, half2: half maps on the same grid.
        pixel_size_A: voxel size, Å.
        mask: ``(N, N, N)`` soft mask; windows are evaluated at centres where it exceeds
            ``mask_threshold`` (None: everywhere).
        window_px: edge of the cubic window (voxels, >= 8).
        step_px: spacing of the window centres (voxels, >= 1).
        threshold: FSC threshold of the local resolution.
        pad_factor: zero padding of each window before its FFT (>= 1).
        batch_size: windows per batched FFT (memory: about ``batch · (pad · w)³ · 16`` bytes).

    Raises:
        ValueError: bad shapes or parameters, or no window centre inside the mask.
    """
    if half1.ndim != 3 or len(set(half1.shape)) != 1 or half2.shape != half1.shape:
        raise ValueError(
            f"half maps must be cubic and equal in shape, got {tuple(half1.shape)} and "
            f"{tuple(half2.shape)}"
        )
    n = int(half1.shape[0])
    if not 8 <= window_px <= n:
        raise ValueError(f"window of {window_px} px must be between 8 px and the box ({n} px)")
    if step_px < 1 or pad_factor < 1:
        raise ValueError("step_px and pad_factor must be >= 1")
    device = half1.device
    axis = grid_axis(n, step_px).to(device)
    count = axis.numel()
    if mask is None:
        inside = torch.ones((count,) * 3, dtype=torch.bool, device=device)
    else:
        if mask.shape != half1.shape:
            raise ValueError(f"mask of shape {tuple(mask.shape)} differs from the half maps'")
        inside = mask.to(device)[axis][:, axis][:, :, axis] > mask_threshold
    index = torch.nonzero(inside)
    if index.shape[0] == 0:
        raise ValueError("no window centre lies inside the mask")
    views = [_windows(h.float(), window_px, step_px) for h in (half1, half2)]
    taper = soft_window(window_px, device=device)
    values = []
    for start in range(0, index.shape[0], batch_size):
        i = index[start : start + batch_size]
        w1 = views[0][i[:, 0], i[:, 1], i[:, 2]]
        w2 = views[1][i[:, 0], i[:, 1], i[:, 2]]
        values.append(windowed_fsc_resolution(w1, w2, taper, pixel_size_A, threshold, pad_factor))
    centre_res = torch.cat(values).clamp_max(window_px * pixel_size_A)
    grid_freq = torch.zeros((count,) * 3, device=device)
    grid_freq[index[:, 0], index[:, 1], index[:, 2]] = 1.0 / centre_res
    freq, support = _interpolate_to_voxels(grid_freq, inside, n, step_px)
    worst = float(centre_res.max())
    per_voxel = torch.where(support > 1e-6, 1.0 / freq.clamp_min(1.0 / worst), worst)
    return LocalResolution(
        resolution_A=per_voxel.clamp_max(worst),
        centres_zyx=axis[index],
        centre_resolution_A=centre_res,
        window_px=window_px,
        step_px=step_px,
        threshold=threshold,
    )


def resolution_histogram(
    values_A: torch.Tensor, n_bins: int = 20, range_A: tuple[float, float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of resolution values: ``(edges (n_bins + 1,) Å, counts (n_bins,) int64)``.

    Bins are equal in Å between the minimum and maximum (or ``range_A``).
    """
    values = values_A.reshape(-1).double()
    low, high = range_A if range_A is not None else (float(values.min()), float(values.max()))
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError("resolution values must be finite")
    if high <= low:
        high = low + 1e-6
    counts = torch.histc(values, bins=n_bins, min=low, max=high).long()
    edges = torch.linspace(low, high, n_bins + 1, dtype=torch.float64)
    return edges, counts
