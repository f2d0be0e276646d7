"""CTF estimation from the averaged power spectrum of micrograph tiles (pure tensor math).

Conventions (``em-conventions.md``, :mod:`cryostack.em.ctf`): defocus in Å, positive =
underfocus; the astigmatism angle is measured from the x axis (columns) and the defocus along
that direction is U. Results are reported with ``U >= V`` and the angle in [0, 180) degrees (the
same CTF as any other equivalent form). Spectra are in the unshifted rfft layout
``(..., T, T // 2 + 1)`` of the tiles, rows = ky.

Method:

1. Spectrum: ``sqrt`` of the mean periodogram of square tiles
   (:func:`cryostack.em.spectra.tile_power_spectrum`), "whitened" by a smooth radial trend
   (exp of a quadratic in s fitted to the log of the rotational average over the fit band).
2. Model: inside the band (``min_resolution_A`` to ``max_resolution_A``) the whitened amplitude is
   fitted by least squares as ``b(s) + e(s) * CTF(s, theta)^2`` with a cubic background ``b`` and
   a linear envelope ``e``. The score of a CTF is the multiple correlation R of that fit: the
   square root of the fraction of the data's variance (after removing the background part)
   explained by the envelope-modulated ``CTF^2``. It is invariant to the background and the
   envelope, so no separate background subtraction can bias the defocus.
3. Search: 1D over mean defocus (and phase shift when fitted) on a fine rotational average; then
   a brute-force 2D search over astigmatism and angle around the best mean defocus values on a
   subsample of the band's pixels; then local refinement of all parameters by L-BFGS (torch
   autograd) on every band pixel, parametrised by ``(mean, a cos 2phi, a sin 2phi)`` so that
   zero astigmatism is not a singular point.
4. Fit resolution: the data are averaged over "equiphase" rings of the fitted CTF (each pixel
   mapped to the frequency of equal phase without astigmatism, as CTFFIND4 does); the resolution
   is where the correlation of that profile with ``CTF^2`` over a sliding window of about two
   Thon rings first falls below a threshold.

Every function is batched over the micrographs and runs on the input's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryostack.em.ctf import ctf_at_frequencies, electron_wavelength_A
from cryostack.em.ctf_search import (
    _band_pixels,
    _canonical,
    _initial_x,
    _refine,
    _search_1d,
    _search_2d,
    _whiten,
)

# re-exported: tests compare the fast search model with the shared CTF through this module
from cryostack.em.ctf_search import _ctf2_fast as _ctf2_fast
from cryostack.em.ctf_search import _phase_terms as _phase_terms
from cryostack.em.grids import fftfreq_grid_2d
from cryostack.em.spectra import tile_power_spectrum


class EmptyMicrographError(ValueError):
    """A micrograph has no contrast (constant or all zeros): there is no spectrum to fit."""


@dataclass(frozen=True)
class Optics:
    """Acquisition values of the micrographs being fitted.

    Attributes:
        pixel_size_A: pixel size in Å/px.
        voltage_kV: acceleration voltage in kV.
        cs_mm: spherical aberration in mm.
        amplitude_contrast: amplitude contrast Q0.
    """

    pixel_size_A: float
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1


@dataclass(frozen=True)
class CtfSearchSettings:
    """Search ranges and options of :func:`estimate_ctf` (lengths in Å, angles in degrees)."""

    tile_size_px: int = 512
    tile_overlap: float = 0.0
    min_resolution_A: float = 30.0
    max_resolution_A: float = 5.0
    defocus_min_A: float = 3000.0
    defocus_max_A: float = 50000.0
    defocus_step_A: float = 100.0
    max_astigmatism_A: float = 2000.0
    astigmatism_step_A: float = 100.0
    angle_step_deg: float = 15.0
    fit_phase_shift: bool = False
    phase_shift_step_deg: float = 10.0
    n_candidates: int = 2
    refine_iterations: int = 40
    fit_resolution_threshold: float = 0.5


@dataclass
class CtfFit:
    """Fitted CTF parameters, all ``(B,)`` float64 tensors.

    Attributes:
        defocus_u_A, defocus_v_A: defocus in Å (``U >= V``), U along the angle direction.
        defocus_angle_deg: astigmatism angle from the x axis in [0, 180).
        phase_shift_deg: phase shift in [0, 180) (0 when not fitted).
        fit_resolution_A: resolution (Å) to which the fitted Thon rings match the data.
        fit_score: multiple correlation R (0..1) of the fit over the band.
    """

    defocus_u_A: torch.Tensor
    defocus_v_A: torch.Tensor
    defocus_angle_deg: torch.Tensor
    phase_shift_deg: torch.Tensor
    fit_resolution_A: torch.Tensor
    fit_score: torch.Tensor


# --------------------------------------------------------------------------------------------
# spectrum


def check_not_empty(micrographs: torch.Tensor) -> None:
    """Raise :class:`EmptyMicrographError` naming the first ``(..., H, W)`` item that is constant
    or not finite."""
    flat = micrographs.reshape(-1, micrographs.shape[-2] * micrographs.shape[-1])
    low, high = torch.aminmax(flat, dim=-1)  # NaN propagates; +-inf shows in min/max
    for i in range(flat.shape[0]):
        lo, hi = float(low[i]), float(high[i])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise EmptyMicrographError(f"micrograph {i} contains NaN or infinite values")
        if hi == lo:
            raise EmptyMicrographError(
                f"micrograph {i} is empty (every pixel is {lo:g}): no Thon rings to fit"
            )


def amplitude_spectrum(
    micrographs: torch.Tensor, tile_size_px: int, overlap: float = 0.0
) -> torch.Tensor:
    """Square root of the averaged tile periodogram.

    Args:
        micrographs: ``(..., H, W)`` real.
        tile_size_px: tile edge ``T`` in pixels.
        overlap: fraction of overlap of neighbouring tiles.

    Returns:
        ``(..., T, T // 2 + 1)`` amplitudes, unshifted rfft layout.
    """
    check_not_empty(micrographs)
    return tile_power_spectrum(micrographs, tile_size_px, overlap).clamp_min(0).sqrt()


# --------------------------------------------------------------------------------------------
# fit resolution and diagnostic image


def _equiphase_frequency(
    s: torch.Tensor,
    theta: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    angle_deg: torch.Tensor,
    optics: Optics,
) -> torch.Tensor:
    """Frequency ``(B, n)`` at which a CTF without astigmatism (mean defocus) has the same phase
    as the fitted CTF at pixels ``(s, theta)`` (``(n,)`` each); parameters ``(B,)``."""
    wavelength = float(electron_wavelength_A(optics.voltage_kV))
    a = 0.5 * math.pi * optics.cs_mm * 1e7 * wavelength**3
    mean = (0.5 * (u + v))[:, None]
    defocus = mean + (0.5 * (u - v))[:, None] * torch.cos(
        2.0 * (theta[None] - torch.deg2rad(angle_deg)[:, None])
    )
    s2 = s[None] ** 2
    g = math.pi * wavelength * defocus * s2 - a * s2 * s2
    b = math.pi * wavelength * mean
    if a == 0.0:
        return torch.sqrt((g / b).clamp_min(0))
    disc = (b * b - 4 * a * g).clamp_min(0)
    return torch.sqrt(((b - torch.sqrt(disc)) / (2 * a)).clamp_min(0))


@dataclass
class _Profile:
    """Equiphase average of the amplitude and windowed statistics, all ``(B, n_bins)``."""

    bins: torch.Tensor  # (B, n) bin of each pixel
    s: torch.Tensor  # (n_bins,) bin centres, 1/Å
    correlation: torch.Tensor
    data_mean: torch.Tensor
    model_mean: torch.Tensor
    model_std: torch.Tensor
    model: torch.Tensor  # (B, n_bins) CTF^2 of the bin centres


def _window_sums(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sums of ``values (B, m)`` over bins ``lo..hi`` (inclusive, ``(B, m)`` each)."""
    cum = torch.nn.functional.pad(values.cumsum(-1), (1, 0))
    return cum.gather(1, hi + 1) - cum.gather(1, lo)


def _equiphase_profile(
    amplitude: torch.Tensor, fit: CtfFit, optics: Optics, s_lo: float
) -> _Profile:
    """Equiphase profile of ``amplitude (B, T, T')`` and its sliding-window correlation with
    ``CTF^2`` (local linear trends removed), window half-width one Thon-ring period."""
    tile = amplitude.shape[-2]
    device = amplitude.device
    freqs = fftfreq_grid_2d(
        (tile, tile), optics.pixel_size_A, rfft=True, device=device, dtype=torch.float64
    )
    kx, ky = freqs[..., 0].reshape(-1), freqs[..., 1].reshape(-1)
    s = torch.sqrt(kx * kx + ky * ky)
    theta = torch.atan2(ky, kx)
    s_eq = _equiphase_frequency(
        s, theta, fit.defocus_u_A, fit.defocus_v_A, fit.defocus_angle_deg, optics
    )
    bin_width = 0.5 / (tile * optics.pixel_size_A)
    n_bins = int(0.5 / optics.pixel_size_A / bin_width) + 1
    bins = (s_eq / bin_width).round().long().clamp(0, n_bins)  # n_bins: beyond Nyquist, dropped
    b = amplitude.shape[0]
    values = amplitude.reshape(b, -1).to(torch.float64)
    sums = values.new_zeros((b, n_bins + 1)).scatter_add_(1, bins, values)
    counts = values.new_zeros((b, n_bins + 1)).scatter_add_(1, bins, torch.ones_like(values))
    profile = (sums / counts.clamp_min(1))[:, :n_bins]
    centres = torch.arange(n_bins, device=device, dtype=torch.float64) * bin_width
    mean = 0.5 * (fit.defocus_u_A + fit.defocus_v_A)
    ctf = ctf_at_frequencies(
        centres[None],
        torch.zeros_like(centres)[None],
        mean,
        mean,
        0.0,
        voltage_kV=optics.voltage_kV,
        cs_mm=optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast,
        phase_shift_deg=fit.phase_shift_deg,
    )
    model = ctf[:, 0, :] ** 2
    # window half-width: one period of CTF^2 (d gamma = pi), in bins
    wavelength = float(electron_wavelength_A(optics.voltage_kV))
    slope = (
        2 * math.pi * wavelength * mean[:, None] * centres
        - 2 * math.pi * optics.cs_mm * 1e7 * wavelength**3 * centres**3
    ).abs()
    half = (math.pi / slope.clamp_min(1e-12) / bin_width).clamp(2, n_bins // 4).long()
    idx = torch.arange(n_bins, device=device)[None]
    first = math.ceil(s_lo / bin_width)
    lo = (idx - half).clamp(min=first)
    hi = (idx + half).clamp(max=n_bins - 1)
    hi = torch.maximum(hi, lo)
    x = centres[None].expand(b, -1)
    n = (hi - lo + 1).to(torch.float64)
    stats = {}
    for name, val in {
        "p": profile,
        "q": model,
        "x": x,
        "pq": profile * model,
        "pp": profile**2,
        "qq": model**2,
        "px": profile * x,
        "qx": model * x,
        "xx": x * x,
    }.items():
        stats[name] = _window_sums(val, lo, hi) / n
    cov = {k: stats[k] - stats[k[0]] * stats[k[1]] for k in ("pq", "pp", "qq", "px", "qx", "xx")}
    var_x = cov["xx"].clamp_min(1e-30)
    cpq = cov["pq"] - cov["px"] * cov["qx"] / var_x
    cpp = (cov["pp"] - cov["px"] ** 2 / var_x).clamp_min(1e-30)
    cqq = (cov["qq"] - cov["qx"] ** 2 / var_x).clamp_min(1e-30)
    correlation = cpq / torch.sqrt(cpp * cqq)
    return _Profile(
        bins=bins,
        s=centres,
        correlation=correlation,
        data_mean=stats["p"],
        model_mean=stats["q"],
        model_std=cov["qq"].clamp_min(1e-30).sqrt(),
        model=model,
    )


def _fit_resolution(profile: _Profile, s_lo: float, threshold: float) -> torch.Tensor:
    """Resolution (Å, ``(B,)``) where the windowed correlation first drops below ``threshold``
    beyond ``s_lo``; ``1 / s_lo`` if it never exceeds it, Nyquist if it never drops."""
    s = profile.s
    valid = s >= s_lo
    below = (profile.correlation < threshold) & valid[None]
    first_below = torch.where(below, s[None], torch.full_like(profile.correlation, math.inf))
    first_below = first_below.min(dim=-1).values
    s_first = torch.where(torch.isinf(first_below), s[-1], first_below)
    return 1.0 / s_first.clamp_min(s_lo)


# --------------------------------------------------------------------------------------------
# public API


def fit_band_invA(settings: CtfSearchSettings, pixel_size_A: float) -> tuple[float, float]:
    """Fit band ``(s_min, s_max)`` in 1/Å (``s_max`` at most 0.95 Nyquist)."""
    if settings.min_resolution_A <= settings.max_resolution_A:
        raise ValueError(
            f"min_resolution_A ({settings.min_resolution_A}) must be larger than "
            f"max_resolution_A ({settings.max_resolution_A})"
        )
    s_min = 1.0 / settings.min_resolution_A
    s_max = min(1.0 / settings.max_resolution_A, 0.95 / (2.0 * pixel_size_A))
    if s_max <= 1.5 * s_min:
        raise ValueError(
            f"fit band {settings.min_resolution_A:g}-{settings.max_resolution_A:g} Å is too narrow "
            f"at {pixel_size_A:g} Å/px (Nyquist {2 * pixel_size_A:g} Å)"
        )
    return s_min, s_max


def fit_ctf_to_spectrum(
    amplitude: torch.Tensor, optics: Optics, settings: CtfSearchSettings = CtfSearchSettings()
) -> CtfFit:
    """Fit the CTF to amplitude spectra.

    Args:
        amplitude: ``(B, T, T // 2 + 1)`` amplitude spectra (see :func:`amplitude_spectrum`).
        optics: pixel size and optics shared by the batch.
        settings: search ranges and options.

    Returns:
        A :class:`CtfFit` of ``(B,)`` tensors (on the spectrum's device).
    """
    tile = int(amplitude.shape[-2])
    s_min, s_max = fit_band_invA(settings, optics.pixel_size_A)
    device = amplitude.device
    band = _band_pixels(tile, optics.pixel_size_A, s_min, s_max, device)
    y = _whiten(amplitude, band, s_min, s_max)
    means, phases = _search_1d(y, band, s_min, s_max, optics, tile, settings)
    stride = max(1, round(math.sqrt(band.index.numel() / 6000.0)))
    sub = _band_pixels(tile, optics.pixel_size_A, s_min, s_max, device, stride)
    y_sub = _whiten(amplitude, sub, s_min, s_max)
    mean, astig, angle, phase = _search_2d(
        y_sub, sub, s_min, s_max, optics, means, phases, settings
    )
    x = _initial_x(mean, astig, angle, phase)
    x, score = _refine(y, band, s_min, s_max, optics, x, settings)
    fit = _fit_from_x(x, score)
    profile = _equiphase_profile(amplitude, fit, optics, s_min)
    fit.fit_resolution_A = _fit_resolution(profile, s_min, settings.fit_resolution_threshold)
    return fit


def _fit_from_x(x: torch.Tensor, score: torch.Tensor) -> CtfFit:
    u, v, angle_deg, phase_deg = _canonical(x)
    return CtfFit(u, v, angle_deg, phase_deg, torch.full_like(u, math.nan), score)


def estimate_ctf(
    micrographs: torch.Tensor, optics: Optics, settings: CtfSearchSettings = CtfSearchSettings()
) -> tuple[CtfFit, torch.Tensor]:
    """Estimate the CTF of micrographs.

    Args:
        micrographs: ``(H, W)`` or ``(B, H, W)`` real images with the same optics.
        optics: pixel size, voltage, Cs, amplitude contrast.
        settings: tile size, band, search ranges and options.

    Returns:
        The :class:`CtfFit` (``(B,)`` tensors; ``(1,)`` for one image) and the amplitude spectra
        ``(B, T, T // 2 + 1)`` (for :func:`diagnostic_image`).

    Raises:
        EmptyMicrographError: a micrograph is constant (e.g. all zeros) or not finite.
        ValueError: the tile is larger than the micrographs, or the band is invalid.
    """
    batch = micrographs.reshape(-1, *micrographs.shape[-2:])
    amplitude = amplitude_spectrum(batch, settings.tile_size_px, settings.tile_overlap)
    return fit_ctf_to_spectrum(amplitude, optics, settings), amplitude


def diagnostic_image(
    amplitude: torch.Tensor,
    fit: CtfFit,
    optics: Optics,
    settings: CtfSearchSettings = CtfSearchSettings(),
) -> torch.Tensor:
    """Display images: the spectrum in the left half, the fitted ``CTF^2`` in the right half.

    Both halves are background-subtracted and normalised along equiphase rings, so matching Thon
    rings continue across the vertical centre line.
    Frequency 0 is at ``(T // 2, T // 2)``; rows are ky (increasing downwards), columns kx.

    Args:
        amplitude: ``(B, T, T // 2 + 1)`` amplitude spectra.
        fit: the fit of those spectra.

    Returns:
        ``(B, T, T)`` values in [0, 1].
    """
    s_min, _ = fit_band_invA(settings, optics.pixel_size_A)
    profile = _equiphase_profile(amplitude, fit, optics, s_min)
    b, tile, width = amplitude.shape
    bins = profile.bins.clamp(max=profile.s.numel() - 1)
    data = amplitude.reshape(b, -1).to(torch.float64) - profile.data_mean.gather(1, bins)
    rms_sums = data.new_zeros((b, profile.s.numel())).scatter_add_(1, bins, data * data)
    counts = data.new_zeros((b, profile.s.numel())).scatter_add_(1, bins, torch.ones_like(data))
    rms = (rms_sums / counts.clamp_min(1)).sqrt().clamp_min(1e-30)
    data = data / rms.gather(1, bins)
    model = (profile.model - profile.model_mean) / profile.model_std
    model = model.gather(1, bins)
    data = data.reshape(b, tile, width)
    model = model.reshape(b, tile, width)
    half = tile // 2
    rows = torch.arange(tile, device=amplitude.device)[:, None]
    cols = torch.arange(tile, device=amplitude.device)[None, :]
    # right half (kx >= 0): the model at (ky, kx); left half (kx < 0): the data at (-ky, -kx)
    right = cols >= half
    src_row = torch.where(right, rows - half, half - rows) % tile
    src_col = torch.where(right, cols - half, half - cols).clamp(max=width - 1)
    full = torch.where(right, model[:, src_row, src_col], data[:, src_row, src_col])
    return ((full.clamp(-2.5, 2.5) + 2.5) / 5.0).to(torch.float32)
