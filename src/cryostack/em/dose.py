"""Radiation-damage (exposure) filter of Grant & Grigorieff (2015, eLife 4:e06980).

- Critical exposure ``N_e(k) = 0.245 k^-1.665 + 2.81`` e/Å^2 at 300 kV (k in 1/Å), times 0.8 at
  200 kV. The signal amplitude after an accumulated exposure ``D`` is ``exp(-D / (2 N_e(k)))``.
- Frame exposure: by default the accumulated exposure of frame ``i`` (0-based) is taken at the
  middle of the frame, ``D_i = pre_exposure + (i + 1/2) dose_per_frame``, which approximates the
  attenuation averaged over the frame's exposure; ``dose_at="end"`` uses the exposure at the end of
  the frame, ``pre_exposure + (i + 1) dose_per_frame`` instead.
- Frame weights are normalised over frames at each frequency so that the sum of squares is 1
  (``w_i = q_i / sqrt(sum_j q_j^2)``, as in Grant & Grigorieff's optimal exposure filter): the
  weighted frame sum then keeps white noise white (same noise power at every frequency), which the
  downstream noise models (CTF estimation, RELION's sigma2) assume. ``normalise="sum"`` instead
  makes the weights sum to 1 at every frequency (a weighted average, preserving signal at k=0).

Grids are rfft grids ``(H, W // 2 + 1)`` in torch's unshifted order (see :mod:`cryostack.em.grids`).
"""

from __future__ import annotations

from typing import Literal

import torch

from cryostack.em.grids import fftfreq_grid_2d

_SUPPORTED_KV = {300.0: 1.0, 200.0: 0.8}


def _voltage_factor(voltage_kV: float) -> float:
    for kv, factor in _SUPPORTED_KV.items():
        if abs(voltage_kV - kv) <= 1.0:
            return factor
    raise ValueError(
        f"critical exposure is calibrated only at 300 kV and 200 kV (scaled by 0.8); "
        f"got voltage_kV={voltage_kV}"
    )


def critical_exposure(k_invA: torch.Tensor, voltage_kV: float = 300.0) -> torch.Tensor:
    """Critical exposure ``N_e(k)`` in e/Å^2 (``inf`` at k = 0).

    Args:
        k_invA: spatial frequency magnitudes in 1/Å, any shape.
        voltage_kV: 300 or 200 (factor 0.8).

    Returns:
        Tensor of the same shape, dtype and device as ``k_invA``.
    """
    factor = _voltage_factor(voltage_kV)
    return factor * (0.245 * torch.pow(k_invA, -1.665) + 2.81)


def frame_exposures(
    n_frames: int,
    dose_per_frame_e_A2: float,
    pre_exposure_e_A2: float = 0.0,
    dose_at: Literal["mid", "end"] = "mid",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Accumulated exposure in e/Å^2 assigned to each frame, ``(n_frames,)`` (see module doc)."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if dose_at not in ("mid", "end"):
        raise ValueError(f"dose_at must be 'mid' or 'end', got {dose_at!r}")
    offset = 0.5 if dose_at == "mid" else 1.0
    index = torch.arange(n_frames, device=device, dtype=dtype)
    return pre_exposure_e_A2 + (index + offset) * dose_per_frame_e_A2


def _frequency_magnitude(
    shape: tuple[int, int],
    pixel_size_A: float,
    rfft: bool,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    freqs = fftfreq_grid_2d(shape, pixel_size_A=pixel_size_A, rfft=rfft, device=device, dtype=dtype)
    return torch.linalg.vector_norm(freqs, dim=-1)


def dose_attenuation(
    shape: tuple[int, int],
    pixel_size_A: float,
    exposure_e_A2: float | torch.Tensor,
    voltage_kV: float = 300.0,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unnormalised signal amplitude attenuation ``exp(-D / (2 N_e(k)))`` (for simulation).

    Args:
        shape: image shape ``(H, W)`` in pixels.
        pixel_size_A: pixel size in Å/px.
        exposure_e_A2: accumulated exposure ``D`` in e/Å^2, float or tensor ``(...)``.
        voltage_kV: 300 or 200.
        rfft: ``W // 2 + 1`` columns instead of ``W``.
        device, dtype: default to ``exposure_e_A2``'s device / float32.

    Returns:
        ``(..., H, W // 2 + 1)`` (or ``(..., H, W)``) factors in (0, 1], 1 at k = 0.
    """
    if isinstance(exposure_e_A2, torch.Tensor) and device is None:
        device = exposure_e_A2.device
    k = _frequency_magnitude(shape, pixel_size_A, rfft, device, dtype)
    n_e = critical_exposure(k, voltage_kV)
    dose = torch.as_tensor(exposure_e_A2, dtype=dtype, device=k.device)[..., None, None]
    return torch.exp(-dose / (2.0 * n_e))


def dose_weights(
    shape: tuple[int, int],
    pixel_size_A: float,
    n_frames: int,
    dose_per_frame_e_A2: float,
    pre_exposure: float = 0.0,
    voltage_kV: float = 300.0,
    *,
    dose_at: Literal["mid", "end"] = "mid",
    normalise: Literal["sum_of_squares", "sum"] = "sum_of_squares",
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-frame exposure-filter weights, normalised over frames at each frequency.

    Args:
        shape: frame shape ``(H, W)`` in pixels.
        pixel_size_A: pixel size in Å/px.
        n_frames: number of movie frames.
        dose_per_frame_e_A2: exposure per frame in e/Å^2.
        pre_exposure: exposure before the first frame in e/Å^2.
        voltage_kV: 300 or 200.
        dose_at: frame exposure at the middle (default) or end of each frame.
        normalise: ``"sum_of_squares"`` (default, sum_i w_i^2 = 1) or ``"sum"`` (sum_i w_i = 1).

    Returns:
        ``(n_frames, H, W // 2 + 1)`` weights (``(n_frames, H, W)`` if not ``rfft``); multiply each
        frame's Fourier transform by its weights and sum over frames.
    """
    if normalise not in ("sum_of_squares", "sum"):
        raise ValueError(f"normalise must be 'sum_of_squares' or 'sum', got {normalise!r}")
    # Work in float64: at high frequency and exposure the attenuations underflow float32 ratios.
    exposures = frame_exposures(
        n_frames, dose_per_frame_e_A2, pre_exposure, dose_at, device=device, dtype=torch.float64
    )
    q = dose_attenuation(shape, pixel_size_A, exposures, voltage_kV, rfft, device, torch.float64)
    if normalise == "sum_of_squares":
        norm = torch.sqrt((q * q).sum(0, keepdim=True))
    else:
        norm = q.sum(0, keepdim=True)
    return (q / norm).to(dtype)
