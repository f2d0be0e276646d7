"""Movie alignment helpers on whole frames: hot pixels, alignment spectra and sums over frames.

Part of :mod:`cryostack.em.motion` (conventions there): frames are ``(T, H, W)``; vectors are
(x, y) in pixels; Fourier arrays are rfft grids ``(..., H, W // 2 + 1)`` in torch's unshifted
order. Holds frame sums done as matrix products, hot-pixel detection and replacement, the
B-factor filtered, cropped spectra the alignment works on (and their phase-ramp shifts), the
factorised dose weights, the plain and dose-weighted sums, and binning by Fourier cropping.
"""

from __future__ import annotations

import functools
import math

import torch

from cryostack.em.dose import dose_weights
from cryostack.em.fourier import fourier_crop


def sum_frames(x: torch.Tensor) -> torch.Tensor:
    """Sum ``(..., T, H, W)`` over T: ``(..., H, W)``.

    Done as a matrix product with a vector of ones, which is many times faster on the CPU than
    ``x.sum(dim=-3)`` (a strided reduction).
    """
    t, h, w = x.shape[-3:]
    ones = torch.ones(1, t, dtype=x.dtype, device=x.device)
    return (ones @ x.reshape(*x.shape[:-3], t, h * w)).reshape(*x.shape[:-3], h, w)


# --------------------------------------------------------------------------------------------
# defects


def detect_hot_pixels(frame_sum: torch.Tensor, threshold_sigma: float = 6.0) -> torch.Tensor:
    """Pixels of a frame sum that are ``threshold_sigma`` standard deviations above its mean.

    Args:
        frame_sum: ``(H, W)`` sum over frames (gain-corrected counts).
        threshold_sigma: outlier threshold in standard deviations of the sum.

    Returns:
        ``(H, W)`` boolean mask, True at hot pixels.
    """
    values = frame_sum.double()
    mean = values.mean()
    std = values.std()
    hot = values > mean + threshold_sigma * std
    if int(hot.sum()) > 0:  # the outliers inflate the std: estimate it again without them
        good = values[~hot]
        hot = values > good.mean() + threshold_sigma * good.std()
    return hot


def replace_pixels(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace masked pixels of every frame with that frame's mean over the unmasked pixels.

    Args:
        frames: ``(..., H, W)`` real.
        mask: ``(H, W)`` boolean, True where a pixel is to be replaced.

    Returns:
        ``(..., H, W)`` frames (a new tensor).
    """
    good = (~mask).to(frames.dtype)
    n_good = good.sum().clamp(min=1.0)
    means = (frames * good).sum(dim=(-2, -1), keepdim=True) / n_good
    return torch.where(mask, means, frames)


# --------------------------------------------------------------------------------------------
# spectra


def bfactor_cutoff_px(bfactor_A2: float, pixel_size_A: float, floor: float = 0.02) -> float:
    """Frequency (cycles/px, at most 0.5) beyond which ``exp(-B k^2 / 4) < floor``."""
    if bfactor_A2 <= 0:
        return 0.5
    k_invA = math.sqrt(-4.0 * math.log(floor) / bfactor_A2)
    return min(0.5, k_invA * pixel_size_A)


def alignment_cutoff_px(
    pixel_size_A: float, bfactor_A2: float, alignment_resolution_A: float
) -> float:
    """Highest frequency (cycles/px) used for alignment: the resolution limit or B-factor cutoff."""
    return min(bfactor_cutoff_px(bfactor_A2, pixel_size_A), pixel_size_A / alignment_resolution_A)


def crop_size(size: int, cutoff_px: float) -> int:
    """Even size of a cropped spectrum keeping frequencies up to ``cutoff_px`` (cycles/px)."""
    if cutoff_px >= 0.5:
        return size - size % 2
    n = 2 * math.ceil(cutoff_px * size) + 4
    return min(n, size - size % 2)


def crop_rfft(
    spectra: torch.Tensor, shape: tuple[int, int], out_shape: tuple[int, int]
) -> torch.Tensor:
    """Low-frequency part of rfft spectra: ``(..., H, W//2+1)`` to ``(..., h, w//2+1)``.

    Frequencies keep their values in cycles per *original* pixel (index / H, index / W); the
    highest row and column of the cropped grid, which have no Hermitian partner, are zeroed.
    """
    h, w = out_shape
    top = spectra[..., : h // 2, : w // 2 + 1]
    bottom = spectra[..., shape[0] - h // 2 :, : w // 2 + 1]
    out = torch.cat([top, bottom], dim=-2)
    if h < shape[0]:
        out[..., h // 2, :] = 0
    if w < shape[1]:
        out[..., w // 2] = 0
    return out


def frequency_axes(
    shape: tuple[int, int], out_shape: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies (cycles per original pixel) of a cropped rfft grid.

    Returns:
        ``ky (h,)`` and ``kx (w//2+1,)``.
    """
    h, w = out_shape
    ky = torch.fft.fftfreq(h, device=device, dtype=dtype) * (h / shape[0])
    kx = torch.fft.rfftfreq(w, device=device, dtype=dtype) * (w / shape[1])
    return ky, kx


def bfactor_filter(
    ky: torch.Tensor, kx: torch.Tensor, pixel_size_A: float, bfactor_A2: float
) -> torch.Tensor:
    """``exp(-B |k|^2 / 4)`` on a grid of frequencies in cycles/px: ``(len(ky), len(kx))``."""
    k2 = (ky[:, None] ** 2 + kx[None, :] ** 2) / pixel_size_A**2
    return torch.exp(-bfactor_A2 * k2 / 4.0)


def shift_spectra(
    spectra: torch.Tensor, shifts_px: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor
) -> torch.Tensor:
    """Move the content of spectra by ``+shifts`` with separable phase ramps.

    ``exp(-2 pi i k . s)`` is applied as two broadcast products (no full ramp is built).

    Args:
        spectra: ``(..., h, w')`` complex.
        shifts_px: ``(..., 2)`` shifts (x, y) in pixels.
        ky, kx: frequency axes in cycles/px (see :func:`frequency_axes`).

    Returns:
        ``(..., h, w')`` shifted spectra (a new tensor).
    """
    s = shifts_px.to(kx.dtype)
    ex = torch.polar(torch.ones_like(kx), -2 * math.pi * s[..., :1] * kx)  # (..., w')
    ey = torch.polar(torch.ones_like(ky), -2 * math.pi * s[..., 1:] * ky)  # (..., h)
    return (spectra * ey[..., :, None]).mul_(ex[..., None, :])


# --------------------------------------------------------------------------------------------
# sums


def dose_weight_factors(
    shape: tuple[int, int],
    pixel_size_A: float,
    n_frames: int,
    dose_per_frame_e_A2: float,
    pre_exposure_e_A2: float = 0.0,
    voltage_kV: float = 300.0,
    device: torch.device | str | None = None,
    tolerance: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exposure-filter weights of all frames as a short sum of separable terms.

    The weights ``w_t(k)`` of :func:`cryostack.em.dose.dose_weights` (sum-of-squares
    normalisation) depend on |k| only and vary smoothly with t and k, so
    ``w_t(k) = sum_r frame[r, t] * frequency[r, k]`` holds with a few terms (5-7 for 1 e/Å²
    per frame) to within ``tolerance`` times the largest weight. The weights are computed by
    ``dose_weights`` on a fine frequency line (spacing ``1 / (8 max(H, W))`` cycles/px, up to
    0.75 cycles/px), factorised by SVD, and the frequency factors interpolated linearly onto the
    grid. A weighted sum over frames then needs one matrix product instead of ``T`` weight grids.

    Args:
        shape: frame shape ``(H, W)``.
        pixel_size_A, n_frames, dose_per_frame_e_A2, pre_exposure_e_A2, voltage_kV: as for
            ``dose_weights``.
        tolerance: largest error of the factorised weights, relative to the largest weight.

    Returns:
        ``frame (R, T)`` and ``frequency (R, H, W//2+1)`` float32 factors.
    """
    h, w = shape
    n_line = 8 * max(h, w)
    line_pixel_A = pixel_size_A * 2.0 / 3.0  # the line reaches 0.75 cycles/px > sqrt(0.5)
    line = dose_weights(
        (1, n_line),
        line_pixel_A,
        n_frames,
        dose_per_frame_e_A2,
        pre_exposure_e_A2,
        voltage_kV,
        device=device,
        dtype=torch.float64,
    )[:, 0, :]  # (T, L) at |k| = j / (n_line * line_pixel_A) 1/Å
    # principal frame patterns: eigenvectors of the small (T, T) Gram matrix, largest first
    _, vectors = torch.linalg.eigh(line @ line.T)
    vectors = vectors.flip(-1)
    rank = 1
    while rank < n_frames:
        basis = vectors[:, :rank]
        if float((basis @ (basis.T @ line) - line).abs().max()) <= tolerance * float(line.max()):
            break
        rank += 1
    frame = vectors[:, :rank].T  # (R, T) orthonormal rows
    line_factors = (frame @ line).float()  # (R, L)
    frame = frame.float()
    ky = torch.fft.fftfreq(h, device=device)
    kx = torch.fft.rfftfreq(w, device=device)
    pos = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) * (n_line * 2.0 / 3.0)
    index = pos.long().clamp(max=line.shape[-1] - 2)
    frac = pos - index
    lo, hi = line_factors[:, index], line_factors[:, index + 1]
    return frame, torch.lerp(lo, hi, frac)


@functools.lru_cache(maxsize=4)
def _cached_dose_weight_factors(
    shape: tuple[int, int],
    pixel_size_A: float,
    n_frames: int,
    dose_per_frame_e_A2: float,
    pre_exposure_e_A2: float,
    voltage_kV: float,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dose_weight_factors`, computed once for the many movies that share them."""
    return dose_weight_factors(
        shape, pixel_size_A, n_frames, dose_per_frame_e_A2, pre_exposure_e_A2, voltage_kV, device
    )


def weighted_sums_ft(
    spectra: torch.Tensor,
    shifts_px: torch.Tensor | None,
    dose_factors: tuple[torch.Tensor, torch.Tensor] | None,
    in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain and dose-weighted sums of frame spectra, optionally shifting them first.

    Args:
        spectra: ``(T, H, W//2+1)`` full-size frame spectra.
        shifts_px: ``(T, 2)`` shifts (x, y) to apply (content moves by ``+shifts``), or None.
        dose_factors: ``(frame, frequency)`` from :func:`dose_weight_factors`, or None for no
            dose-weighted sum.
        in_place: shift ``spectra`` in place (saves memory and time; they are changed).

    Returns:
        ``(H, W//2+1)`` plain sum and dose-weighted sum (None without ``dose_factors``).
    """
    n_frames, h, wh = spectra.shape
    rows = [torch.ones(1, n_frames, device=spectra.device)]
    if dose_factors is not None:
        rows.append(dose_factors[0].to(spectra.device))
    weights = torch.cat(rows).to(spectra.dtype)  # (1 + R, T)
    if shifts_px is not None:  # separable phase ramps, applied as two broadcast products
        ky = torch.fft.fftfreq(h, device=spectra.device)
        kx = torch.fft.rfftfreq(2 * (wh - 1), device=spectra.device)
        s = shifts_px.to(device=spectra.device, dtype=kx.dtype)
        ey = torch.polar(torch.ones_like(ky), -2 * math.pi * s[:, 1:] * ky)  # (T, H)
        ex = torch.polar(torch.ones_like(kx), -2 * math.pi * s[:, :1] * kx)  # (T, W')
        spectra = spectra.mul_(ey[:, :, None]) if in_place else spectra * ey[:, :, None]
        spectra.mul_(ex[:, None, :])
    sums = (weights @ spectra.reshape(n_frames, -1)).reshape(-1, h, wh)
    if dose_factors is None:
        return sums[0], None
    weighted = sum_frames((sums[1:] * dose_factors[1].to(spectra.device)).unsqueeze(0))[0]
    return sums[0], weighted


def bin_image(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Fourier-crop an ``(H, W)`` image by ``factor`` (>= 1) to even sizes ``round(N / factor)``."""
    if factor <= 1.0:
        return image
    h, w = image.shape[-2:]
    new = (2 * round(h / factor / 2), 2 * round(w / factor / 2))
    return fourier_crop(image, new)


def binned_pixel_size(pixel_size_A: float, shape: tuple[int, int], binning: float) -> float:
    """Pixel size after :func:`bin_image` of an ``(H, W)`` image (exact for the cropped width)."""
    if binning <= 1.0:
        return pixel_size_A
    w = shape[1]
    return pixel_size_A * w / (2 * round(w / binning / 2))
