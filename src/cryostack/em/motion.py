"""Movie alignment (beam-induced motion correction): pure tensor math.

Conventions (see :mod:`cryostack.em.grids`): frames are ``(T, H, W)``; vectors are (x, y) in
pixels; Fourier arrays are rfft grids ``(..., H, W // 2 + 1)`` in torch's unshifted order.

*Drift* follows :func:`cryostack.em.simulate.simulate_movie`: ``drift_px[t]`` is the displacement
of frame ``t`` relative to the first frame, i.e. a feature at (x, y) in frame 0 is at
``(x, y) + drift_px[t]`` in frame ``t``. Aligning moves frame ``t`` by ``-drift_px[t]``.

The method:

1. *Hot pixels*: pixels of the frame sum further than ``threshold_sigma`` standard deviations above
   the mean (or given defects) are replaced by each frame's mean.
2. *Global alignment*: the frames' spectra are B-factor filtered (``exp(-B k^2 / 4)``, k in 1/Å),
   cropped to the frequencies where that filter matters, and each frame is aligned iteratively
   against the sum of all *other* aligned frames (leave-one-out, so a frame's own noise never
   correlates with the reference). The cross-correlation peak is found on a grid (inverse FFT of
   the cropped cross-power spectrum) and refined to sub-pixel precision by Newton steps on the
   band-limited cross-correlation evaluated exactly in Fourier space. Shifts stay within
   ``max_shift_px``. *Significance*: the z-score of each aligned frame's peak over the search
   window is compared with the largest of as many noise samples (+2): when the median frame
   falls below it the movie holds no signal to align on and the drift is set to zero (reported
   as ``aligned=False``) instead of a random walk on noise; otherwise single frames below it
   get drift interpolated from their neighbours.
3. *Local alignment*: patches on a grid follow the global drift (windows moved by the rounded
   drift, the sub-pixel rest applied as a phase ramp) and are aligned the same way, all at once.
   A smooth model is fitted by least squares to the patch trajectories: per axis, spatial terms
   (1, x, y, x^2, xy, y^2) times time terms (tau, tau^2, tau^3), ``tau = t / (T - 1)``, plus one
   free offset per patch (a patch trajectory is only known up to a constant). It is zero at
   frame 0.
4. *Sums*: without local alignment the global shifts are applied as exact Fourier phase ramps;
   with it every frame is interpolated once (bicubic) at ``r + drift_t + d(r, t)``. The
   dose-weighted sum uses :func:`cryostack.em.dose.dose_weights` (sum-of-squares normalisation),
   factorised into a few separable terms so that it is one matrix product over frames. Binning
   Fourier-crops the sums (:func:`cryostack.em.fourier.fourier_crop`).

Speed (CPU): frames are Fourier transformed once; alignment works on spectra cropped to
``alignment_resolution_A`` (10 Å by default), which holds nearly all the signal of a 1 e/Å² frame;
sums over frames are matrix products (much faster than strided reductions); quantities shared by
movies of one size (dose-weight factors, Newton weights) are cached.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
# cross-correlation peaks


def coarse_peak(
    cross: torch.Tensor, shape: tuple[int, int], max_shift_px: float, max_grid: int | None = None
) -> torch.Tensor:
    """Peak of the cross-correlation sampled on the cropped grid, with a parabola refinement.

    Args:
        cross: ``(..., h, w//2+1)`` cross-power spectra (cropped).
        shape: full image shape ``(H, W)`` the frequencies refer to.
        max_shift_px: search radius in original pixels (per axis).
        max_grid: crop the spectra further to at most this size (a coarser, cheaper search).

    Returns:
        ``(..., 2)`` shifts (x, y) in original pixels where ``Re sum_k cross e^{2 pi i k s}`` peaks.
    """
    if max_grid is not None and max(cross.shape[-2], 2 * (cross.shape[-1] - 1)) > max_grid:
        h0, w0 = cross.shape[-2], 2 * (cross.shape[-1] - 1)
        cross = crop_rfft(cross, (h0, w0), (min(h0, max_grid), min(w0, max_grid)))
    h = cross.shape[-2]
    w = 2 * (cross.shape[-1] - 1)
    ccf = torch.fft.irfft2(cross, s=(h, w))
    step_y, step_x = shape[0] / h, shape[1] / w
    iy = torch.fft.fftfreq(h, device=cross.device) * h
    ix = torch.fft.fftfreq(w, device=cross.device) * w
    outside = (iy.abs()[:, None] * step_y > max_shift_px) | (
        ix.abs()[None, :] * step_x > max_shift_px
    )
    flat = ccf.masked_fill(outside, -torch.inf).flatten(-2)
    best = flat.argmax(dim=-1)
    by, bx = best // w, best % w

    def parabola(
        axis_size: int, idx: torch.Tensor, other: torch.Tensor, along_y: bool
    ) -> torch.Tensor:
        lo, hi = (idx - 1) % axis_size, (idx + 1) % axis_size
        if along_y:
            f0 = _take(ccf, idx, other, w)
            fm, fp = _take(ccf, lo, other, w), _take(ccf, hi, other, w)
        else:
            f0 = _take(ccf, other, idx, w)
            fm, fp = _take(ccf, other, lo, w), _take(ccf, other, hi, w)
        denom = fm - 2 * f0 + fp
        offset = torch.where(denom < 0, 0.5 * (fm - fp) / denom.clamp(max=-1e-30), 0.0)
        return offset.clamp(-0.5, 0.5)

    dy = parabola(h, by, bx, True)
    dx = parabola(w, bx, by, False)
    sy = (torch.where(by > h // 2, by - h, by).to(ccf.dtype) + dy) * step_y
    sx = (torch.where(bx > w // 2, bx - w, bx).to(ccf.dtype) + dx) * step_x
    return torch.stack([sx, sy], dim=-1)


def _take(ccf: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor, w: int) -> torch.Tensor:
    flat = ccf.flatten(-2)
    return flat.gather(-1, (iy * w + ix)[..., None])[..., 0]


def newton_basis(ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Weights turning a cross-power spectrum into the gradient and Hessian of its correlation.

    For ``c(s) = Re sum_k X(k) exp(2 pi i k . s)`` over the full spectrum (represented by its
    rfft half), at ``s = 0``: ``grad = -2 pi sum_k k Im X`` and
    ``Hess = -(2 pi)^2 sum_k k k^T Re X``. The returned matrix applied to ``view_as_real(X)``
    flattened gives ``(gx, gy, hxx, hxy, hyy)``.

    Returns:
        ``(h * w' * 2, 5)`` float tensor.
    """
    two_pi = 2 * math.pi
    weights = torch.full_like(kx, 2.0)
    weights[0] = 1.0  # the kx = 0 column has no mirrored partner in the rfft half
    gx = (kx * weights)[None, :].expand(len(ky), -1)
    gy = ky[:, None] * weights[None, :]
    basis = kx.new_zeros((len(ky), len(kx), 2, 5))
    basis[..., 0, 2] = -(two_pi**2) * gx * kx[None, :]
    basis[..., 0, 3] = -(two_pi**2) * gx * ky[:, None]
    basis[..., 0, 4] = -(two_pi**2) * gy * ky[:, None]
    basis[..., 1, 0] = -two_pi * gx
    basis[..., 1, 1] = -two_pi * gy
    return basis.reshape(-1, 5)


@functools.lru_cache(maxsize=8)
def _cached_newton_basis(
    shape: tuple[int, int], h: int, wh: int, device: str, dtype: torch.dtype
) -> torch.Tensor:
    """:func:`newton_basis` of a cropped grid (many movies share one: computed once)."""
    ky, kx = frequency_axes(shape, (h, 2 * (wh - 1)), torch.device(device), dtype)
    return newton_basis(ky, kx)


def newton_step(cross: torch.Tensor, basis: torch.Tensor, max_step_px: float = 1.0) -> torch.Tensor:
    """One Newton step from ``s = 0`` towards the peak of the band-limited cross-correlation.

    The cross-correlation ``c(s) = Re sum_k cross(k) exp(2 pi i k . s)`` is differentiated
    exactly in Fourier space (no interpolation). Where its Hessian is not negative definite the
    step is zero; steps are limited to ``max_step_px`` per axis.

    Args:
        cross: ``(..., h, w//2+1)`` cross-power spectra.
        basis: from :func:`newton_basis` for the same grid.

    Returns:
        ``(..., 2)`` steps (x, y) in pixels.
    """
    values = torch.view_as_real(cross).flatten(-3) @ basis  # (..., 5)
    gx, gy, hxx, hxy, hyy = values.unbind(-1)
    det = hxx * hyy - hxy * hxy
    ok = (hxx < 0) & (det > 0)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    step_x = -(hyy * gx - hxy * gy) / safe_det
    step_y = -(hxx * gy - hxy * gx) / safe_det
    step = torch.stack([step_x, step_y], dim=-1).clamp(-max_step_px, max_step_px)
    return torch.where(ok[..., None], step, torch.zeros_like(step))


def align_to_sum(
    spectra: torch.Tensor,
    shape: tuple[int, int],
    ky: torch.Tensor,
    kx: torch.Tensor,
    *,
    max_shift_px: float,
    max_iterations: int = 10,
    tolerance_px: float = 0.01,
    coarse_iterations: int = 2,
) -> torch.Tensor:
    """Align each frame to the sum of the other aligned frames, iteratively.

    The first ``coarse_iterations`` passes locate the cross-correlation peaks on the sampled grid
    (:func:`coarse_peak`); the following passes refine them with one Newton step each
    (:func:`newton_step`) until no shift changes by more than ``tolerance_px``.

    Args:
        spectra: ``(..., T, h, w//2+1)`` filtered, cropped spectra of the frames.
        shape: full frame shape ``(H, W)``.
        ky, kx: frequency axes of the cropped grid in cycles/px.
        max_shift_px: search radius per axis of the coarse passes.
        max_iterations: at most this many Newton passes.
        tolerance_px: stop when no shift changes by more than this.

    Returns:
        ``(..., T, 2)`` displacements (x, y) of each frame relative to the first frame; every
        frame stays within ``max_shift_px`` per axis of the frames' common offset.
    """
    shifts = spectra.new_zeros((*spectra.shape[:-2], 2), dtype=kx.dtype)
    basis = _cached_newton_basis(shape, ky.shape[0], kx.shape[0], str(kx.device), kx.dtype)
    power = spectra.real.square() + spectra.imag.square()  # |aligned|^2: ramps keep it
    # Frame t measures its error minus the mean error of the others, e_t - (E - e_t) / (T - 1);
    # updating all frames at once with (T - 1) / T of it leaves every frame with E / T, a common
    # offset, instead of overshooting (which oscillates forever for T = 2).
    n_frames = spectra.shape[-3]
    damping = (n_frames - 1) / n_frames
    for iteration in range(coarse_iterations + max(1, max_iterations)):
        aligned = shift_spectra(spectra, -shifts, ky, kx) if iteration else spectra
        # cross-power with the sum of the *other* frames: conj(S - A) A = conj(S) A - |A|^2
        cross = sum_frames(aligned).unsqueeze(-3).conj() * aligned - power
        if iteration < coarse_iterations:
            grid = 128 if iteration == 0 else None  # the first reference is blurred anyway
            shifts = shifts + damping * coarse_peak(cross, shape, max_shift_px, grid)
            shifts = shifts.clamp(-max_shift_px, max_shift_px)
            continue
        delta = damping * newton_step(cross, basis)
        shifts = (shifts + delta).clamp(-max_shift_px, max_shift_px)
        if float(delta.abs().max()) < tolerance_px:
            break
    return shifts - shifts[..., :1, :]


def noise_peak_z(n_points: int) -> float:
    """Expected largest of ``n_points`` independent standard normal values, ``sqrt(2 ln n)``."""
    return math.sqrt(2.0 * math.log(max(n_points, 2)))


def peak_significance(
    spectra: torch.Tensor,
    shifts_px: torch.Tensor,
    shape: tuple[int, int],
    ky: torch.Tensor,
    kx: torch.Tensor,
    max_shift_px: float,
) -> tuple[torch.Tensor, int]:
    """How far each aligned frame's correlation peak stands out of the correlation noise.

    Each frame, moved by ``-shifts_px``, is cross-correlated with the sum of the other aligned
    frames (sampled on the cropped grid). Its z-score is the correlation at zero shift (the
    aligned position) minus the mean over the search window (``|shift| <= max_shift_px`` per
    axis), divided by the standard deviation over that window. Frames of pure noise give the
    largest of ``n`` window samples, about :func:`noise_peak_z` ``(n)`` (less: the samples are
    correlated), even after the alignment has chased that noise; frames with a real common
    signal give a peak far above it.

    Args:
        spectra: ``(..., T, h, w//2+1)`` filtered, cropped spectra (as for :func:`align_to_sum`).
        shifts_px: ``(..., T, 2)`` displacements (x, y) found for the frames.
        shape: full frame shape ``(H, W)``.
        ky, kx: frequency axes of the cropped grid in cycles/px.
        max_shift_px: search radius per axis, in original pixels.

    Returns:
        ``(..., T)`` z-scores and the number of grid points in the search window.
    """
    aligned = shift_spectra(spectra, -shifts_px, ky, kx)
    power = spectra.real.square() + spectra.imag.square()
    cross = sum_frames(aligned).unsqueeze(-3).conj() * aligned - power
    h, w = cross.shape[-2], 2 * (cross.shape[-1] - 1)
    ccf = torch.fft.irfft2(cross, s=(h, w))
    iy = torch.fft.fftfreq(h, device=ccf.device) * h * (shape[0] / h)
    ix = torch.fft.fftfreq(w, device=ccf.device) * w * (shape[1] / w)
    inside = (iy.abs()[:, None] <= max_shift_px) & (ix.abs()[None, :] <= max_shift_px)
    window = ccf[..., inside]
    z = (ccf[..., 0, 0] - window.mean(dim=-1)) / window.std(dim=-1).clamp(min=1e-30)
    return z, int(inside.sum())


def interpolate_weak_frames(drift_px: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """Replace the drift of frames without a significant peak by interpolation in time.

    A frame whose correlation peak is no stronger than noise maxima may have been moved to one of
    them (tens of pixels off); its drift is instead interpolated linearly (in frame number) from
    the nearest reliable frames before and after it (held constant beyond the first or last).

    Args:
        drift_px: ``(T, 2)`` displacements (x, y) of the frames.
        weak: ``(T,)`` boolean, True for the frames to replace.

    Returns:
        ``(T, 2)`` displacements relative to the first frame (a new tensor).
    """
    weak = weak.to(drift_px.device)
    if not bool(weak.any()) or int((~weak).sum()) == 0:
        return drift_px.clone()
    t = torch.arange(drift_px.shape[0], device=drift_px.device, dtype=drift_px.dtype)
    good_t, good = t[~weak], drift_px[~weak]
    right = torch.searchsorted(good_t, t).clamp(1, max(len(good_t) - 1, 1))
    left = right - 1
    if len(good_t) == 1:
        filled = good.expand_as(drift_px)
    else:
        span = good_t[right] - good_t[left]
        frac = ((t - good_t[left]) / span).clamp(0.0, 1.0)[:, None]
        filled = torch.lerp(good[left], good[right], frac)
    out = torch.where(weak[:, None], filled, drift_px)
    return out - out[:1]


def edge_taper(
    shape: tuple[int, int],
    fraction: float = 0.1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(H, W)`` window: 1 inside, raised-cosine fall to 0 over ``fraction`` of each edge."""

    def profile(n: int) -> torch.Tensor:
        width = max(1, round(fraction * n))
        x = torch.arange(n, device=device, dtype=torch.float64)
        distance = torch.minimum(x + 0.5, n - 0.5 - x)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (distance / width).clamp(max=1.0))
        return ramp.to(dtype)

    return profile(shape[0])[:, None] * profile(shape[1])[None, :]


def alignment_spectra(
    frames: torch.Tensor,
    pixel_size_A: float,
    bfactor_A2: float,
    cutoff_px: float = 0.5,
    taper: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B-factor-filtered, cropped spectra of frames ready for :func:`align_to_sum`.

    Args:
        frames: ``(..., T, H, W)`` real (e.g. patches).
        pixel_size_A, bfactor_A2: for the filter ``exp(-B k^2 / 4)``.
        cutoff_px: highest frequency kept (cycles/px).
        taper: soften the edges (:func:`edge_taper`) so that the fixed patch border does not
            pull the correlation peak towards zero shift.

    Returns:
        spectra ``(..., T, h, w//2+1)`` complex and their frequency axes ``ky``, ``kx`` (cycles/px).
    """
    shape = (frames.shape[-2], frames.shape[-1])
    cutoff = min(cutoff_px, bfactor_cutoff_px(bfactor_A2, pixel_size_A))
    out_shape = (crop_size(shape[0], cutoff), crop_size(shape[1], cutoff))
    frames = frames - frames.mean(dim=(-2, -1), keepdim=True)
    if taper:
        frames = frames * edge_taper(shape, device=frames.device, dtype=frames.dtype)
    spectra = crop_rfft(torch.fft.rfft2(frames), shape, out_shape)
    ky, kx = frequency_axes(shape, out_shape, frames.device, frames.dtype)
    return spectra * bfactor_filter(ky, kx, pixel_size_A, bfactor_A2), ky, kx


# --------------------------------------------------------------------------------------------
# local motion model


def patch_grid(
    shape: tuple[int, int], patches_x: int, patches_y: int
) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
    """Non-overlapping tiles covering the frame centre.

    Returns:
        ``(ph, pw)`` tile size, ``starts (P, 2)`` top-left (y, x) pixel of each tile (row-major
        over the grid) and ``centres_px (P, 2)`` tile centres (x, y) in pixels.
    """
    h, w = shape
    ph, pw = h // patches_y, w // patches_x
    oy, ox = (h - ph * patches_y) // 2, (w - pw * patches_x) // 2
    iy, ix = torch.meshgrid(torch.arange(patches_y), torch.arange(patches_x), indexing="ij")
    starts = torch.stack([oy + iy.flatten() * ph, ox + ix.flatten() * pw], dim=-1)
    centres = torch.stack(
        [starts[:, 1] + (pw - 1) / 2, starts[:, 0] + (ph - 1) / 2], dim=-1
    ).double()
    return (ph, pw), starts, centres


@dataclass
class MotionModel:
    """Smooth local motion: ``d(x, y, t) = sum_jm c[:, j, m] phi_j(x, y) tau^(m + 1)``.

    Attributes:
        coefficients: ``(2, J, M)`` (x and y displacement in pixels).
        spatial_terms: names of the J spatial terms (of "1", "x", "y", "xx", "xy", "yy"), in
            normalised coordinates (-1 at pixel 0, +1 at the last pixel).
        shape: frame shape ``(H, W)``.
        n_frames: number of frames T (``tau = t / (T - 1)``).
    """

    coefficients: torch.Tensor
    spatial_terms: tuple[str, ...]
    shape: tuple[int, int]
    n_frames: int


def _spatial_basis(
    terms: tuple[str, ...], x_norm: torch.Tensor, y_norm: torch.Tensor
) -> torch.Tensor:
    values = {
        "1": torch.ones_like(x_norm),
        "x": x_norm,
        "y": y_norm,
        "xx": x_norm * x_norm,
        "xy": x_norm * y_norm,
        "yy": y_norm * y_norm,
    }
    return torch.stack([values[t] for t in terms], dim=-1)


def _time_basis(n_frames: int, order: int, dtype: torch.dtype) -> torch.Tensor:
    tau = torch.arange(n_frames, dtype=dtype) / max(n_frames - 1, 1)
    return torch.stack([tau ** (m + 1) for m in range(order)], dim=-1)  # (T, M)


def _normalised(
    x_px: torch.Tensor, y_px: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = shape
    return 2 * x_px / max(w - 1, 1) - 1, 2 * y_px / max(h - 1, 1) - 1


def spatial_terms_for_grid(patches_x: int, patches_y: int) -> tuple[str, ...]:
    """Spatial terms a patch grid can determine (quadratic where there are >= 3 patches)."""
    terms = ["1"]
    if patches_x >= 2:
        terms.append("x")
    if patches_y >= 2:
        terms.append("y")
    if patches_x >= 3:
        terms.append("xx")
    if patches_x >= 2 and patches_y >= 2:
        terms.append("xy")
    if patches_y >= 3:
        terms.append("yy")
    return tuple(terms)


def fit_motion_model(
    centres_px: torch.Tensor,
    shifts_px: torch.Tensor,
    shape: tuple[int, int],
    spatial_terms: tuple[str, ...],
    time_order: int = 3,
) -> MotionModel:
    """Least-squares fit of a smooth motion model to patch trajectories.

    Args:
        centres_px: ``(P, 2)`` patch centres (x, y) in pixels.
        shifts_px: ``(P, T, 2)`` measured displacements of each patch (each known up to a
            constant: one free offset per patch and axis is fitted and discarded).
        shape: frame shape ``(H, W)``.
        spatial_terms: see :class:`MotionModel`.
        time_order: number of time terms (tau, tau^2, ...).

    Returns:
        The fitted :class:`MotionModel` (zero at frame 0).
    """
    n_patches, n_frames, _ = shifts_px.shape
    x_norm, y_norm = _normalised(centres_px[:, 0].double(), centres_px[:, 1].double(), shape)
    phi = _spatial_basis(spatial_terms, x_norm, y_norm)  # (P, J)
    order = min(time_order, max(n_frames - 1, 1))
    psi = _time_basis(n_frames, order, torch.float64)  # (T, M)
    design_model = (phi[:, None, :, None] * psi[None, :, None, :]).reshape(n_patches * n_frames, -1)
    offsets = torch.eye(n_patches, dtype=torch.float64).repeat_interleave(n_frames, dim=0)
    design = torch.cat([design_model, offsets], dim=1)
    target = shifts_px.double().reshape(n_patches * n_frames, 2)
    solution = torch.linalg.lstsq(design, target).solution  # (J*M + P, 2)
    n_model = design_model.shape[1]
    coefficients = solution[:n_model].T.reshape(2, len(spatial_terms), order)
    return MotionModel(coefficients, tuple(spatial_terms), shape, n_frames)


def evaluate_motion_model(
    model: MotionModel, x_px: torch.Tensor, y_px: torch.Tensor
) -> torch.Tensor:
    """Local displacement of every frame at pixel positions: ``(T, ..., 2)`` (x, y) pixels."""
    x_norm, y_norm = _normalised(x_px.double(), y_px.double(), model.shape)
    phi = _spatial_basis(model.spatial_terms, x_norm, y_norm)  # (..., J)
    psi = _time_basis(model.n_frames, model.coefficients.shape[-1], torch.float64)  # (T, M)
    return torch.einsum("cjm,...j,tm->t...c", model.coefficients.double(), phi, psi)


# --------------------------------------------------------------------------------------------
# sums


def warp_frames(
    frames: torch.Tensor, drift_px: torch.Tensor, model: MotionModel, chunk: int = 8
) -> torch.Tensor:
    """Undo global and local motion: ``out_t(r) = frames_t(r + drift_t + d(r, t))`` (bicubic).

    The sampling grid of every frame is one matrix product: the model's spatial terms at every
    pixel times its per-frame coefficients (global drift and the identity grid folded into the
    constant and linear terms).

    Args:
        frames: ``(T, H, W)`` frames as recorded.
        drift_px: ``(T, 2)`` global displacement (x, y) of each frame.
        model: the local motion model.
        chunk: frames warped at a time (bounds memory).

    Returns:
        ``(T, H, W)`` aligned frames (values beyond the border repeat the edge).
    """
    n_frames, h, w = frames.shape
    dtype, device = frames.dtype, frames.device
    terms = ("1", "x", "y", "xx", "xy", "yy")
    coefficients = torch.zeros(n_frames, len(terms), 2, dtype=torch.float64)
    psi = _time_basis(model.n_frames, model.coefficients.shape[-1], torch.float64)  # (T, M)
    for j, term in enumerate(model.spatial_terms):
        coefficients[:, terms.index(term), :] = psi @ model.coefficients[:, j, :].double().T
    coefficients[:, 0, :] += drift_px.double().cpu()
    # grid_sample units (align_corners=True): -1 and +1 at the end pixels
    coefficients *= torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=torch.float64)
    coefficients[:, 1, 0] += 1.0  # identity: normalised x is the "x" term, y the "y" term
    coefficients[:, 2, 1] += 1.0
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, h, device=device, dtype=dtype),
        torch.linspace(-1, 1, w, device=device, dtype=dtype),
        indexing="ij",
    )
    phi = _spatial_basis(terms, xx.reshape(-1), yy.reshape(-1))  # (H * W, 6)
    coefficients = coefficients.to(device=device, dtype=dtype)
    out = torch.empty_like(frames)
    for t0 in range(0, n_frames, chunk):
        block = coefficients[t0 : t0 + chunk]  # (c, 6, 2)
        grid = (phi @ block.permute(1, 0, 2).reshape(len(terms), -1)).view(h, w, -1, 2)
        grid = grid.permute(2, 0, 1, 3)  # (c, H, W, 2)
        warped = F.grid_sample(
            frames[t0 : t0 + chunk, None],
            grid,
            mode="bicubic",
            padding_mode="border",
            align_corners=True,
        )
        out[t0 : t0 + chunk] = warped[:, 0]
    return out


def shifted_patches(
    frames: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], drift_px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches that follow the global drift to the nearest pixel.

    In frame ``t`` the whole patch grid (see :func:`patch_grid`) is moved by ``round(drift_t)``,
    periodically (as a Fourier shift of the whole frame would move it: content leaving one edge
    comes back at the other, identically in every frame). The content of the patches is still
    displaced by the returned residual (at most half a pixel).

    Args:
        frames: ``(T, H, W)``.
        grid: ``(patches_y, patches_x)``.
        size: ``(ph, pw)`` patch size.
        drift_px: ``(T, 2)`` global displacement (x, y) of each frame.

    Returns:
        ``(P, T, ph, pw)`` patches (row-major over the grid) and ``(T, 2)`` residual
        displacements (x, y) in pixels.
    """
    n_frames, h, w = frames.shape
    (gy, gx), (ph, pw) = grid, size
    oy, ox = (h - ph * gy) // 2, (w - pw * gx) // 2
    drift = drift_px.double().cpu()
    offsets = torch.round(drift).long()
    patches = frames.new_empty((gy, gx, n_frames, ph, pw))
    for t in range(n_frames):
        rows = (oy + int(offsets[t, 1]) + torch.arange(gy * ph, device=frames.device)) % h
        cols = (ox + int(offsets[t, 0]) + torch.arange(gx * pw, device=frames.device)) % w
        region = frames[t].index_select(0, rows).index_select(1, cols)
        patches[:, :, t] = region.reshape(gy, ph, gx, pw).permute(0, 2, 1, 3)
    return patches.reshape(gy * gx, n_frames, ph, pw), drift - offsets.double()


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


# --------------------------------------------------------------------------------------------
# whole movie


@dataclass
class MovieAlignment:
    """Result of :func:`align_movie`.

    Attributes:
        drift_px: ``(T, 2)`` global displacement (x, y) of each frame relative to the first.
        model: local motion model (None for global alignment only).
        patch_centres_px: ``(P, 2)`` patch centres (x, y), or None.
        patch_shifts_px: ``(P, T, 2)`` measured patch displacements after global alignment.
        hot_pixels: number of pixels replaced.
        aligned_sum: ``(H', W')`` sum of the aligned frames (binned).
        dose_weighted_sum: ``(H', W')`` dose-weighted sum, or None.
        pixel_size_A: pixel size of the sums.
        peak_z: ``(T,)`` z-scores of the frames' correlation peaks after the global alignment
            (see :func:`peak_significance`), or None.
        min_peak_z: the median z-score the global alignment needed to be accepted.
        aligned: False when the frames showed no significant correlation peak (median z-score
            below ``min_peak_z``: the data hold no signal to align on); the drift is then zero,
            no local alignment is done and the sums are of the unaligned frames. When True, the
            frames whose own z-score is below ``min_peak_z`` have interpolated drift
            (:func:`interpolate_weak_frames`).
    """

    drift_px: torch.Tensor
    model: MotionModel | None
    patch_centres_px: torch.Tensor | None
    patch_shifts_px: torch.Tensor | None
    hot_pixels: int
    aligned_sum: torch.Tensor
    dose_weighted_sum: torch.Tensor | None
    pixel_size_A: float
    peak_z: torch.Tensor | None = None
    min_peak_z: float = 0.0
    aligned: bool = True

    def displacement_px(self, x_px: torch.Tensor, y_px: torch.Tensor) -> torch.Tensor:
        """Total displacement (global + local) of every frame at positions: ``(T, ..., 2)``."""
        shape = (self.drift_px.shape[0], *x_px.shape, 2)
        total = self.drift_px.double().reshape(self.drift_px.shape[0], *([1] * x_px.dim()), 2)
        total = total.expand(shape)
        if self.model is not None:
            total = total + evaluate_motion_model(self.model, x_px, y_px)
        return total


def align_movie(
    frames: torch.Tensor,
    pixel_size_A: float,
    *,
    bfactor_A2: float = 150.0,
    alignment_resolution_A: float = 10.0,
    patches_x: int = 0,
    patches_y: int = 0,
    max_iterations: int = 10,
    max_shift_px: float = 60.0,
    gain: torch.Tensor | None = None,
    hot_pixel_sigma: float | None = 6.0,
    defect_mask: torch.Tensor | None = None,
    dose_per_frame_e_A2: float | None = None,
    pre_exposure_e_A2: float = 0.0,
    voltage_kV: float = 300.0,
    first_frame: int = 0,
    binning: float = 1.0,
    min_peak_z: float | None = None,
) -> MovieAlignment:
    """Align a movie (global, then optionally local) and return its sums.

    Args:
        frames: ``(T, H, W)`` frames (any real dtype; converted to float32 on their device).
        pixel_size_A: pixel size of the frames in Å/px.
        bfactor_A2: B-factor of the alignment filter in Å^2.
        alignment_resolution_A: highest resolution used for alignment (the spectra are cropped
            there, or where the B-factor filter falls below 0.02 if that is lower).
        patches_x, patches_y: patch grid of the local alignment (0: global only).
        max_iterations: passes of the iterative alignment.
        max_shift_px: largest global displacement searched, per axis, in pixels.
        gain: ``(H, W)`` gain reference, multiplied into the frames.
        hot_pixel_sigma: threshold of :func:`detect_hot_pixels` (None: no detection).
        defect_mask: ``(H, W)`` boolean, True at known bad pixels.
        dose_per_frame_e_A2: dose per frame; given, the dose-weighted sum is computed.
        pre_exposure_e_A2, voltage_kV: for the exposure filter.
        first_frame: index in the original movie of ``frames[0]`` (for the accumulated dose).
        binning: Fourier-crop factor of the sums (>= 1).
        min_peak_z: median z-score of the frames' correlation peaks (:func:`peak_significance`)
            below which the movie is deemed to hold no signal to align on: the drift is set to
            zero (``aligned`` False) instead of following noise; otherwise single frames below it
            get drift interpolated from their neighbours. None: ``noise_peak_z(n) + 2``
            for the ``n`` grid points of the search window (about 6 for a 1024 px movie).
    """
    if frames.dim() != 3 or frames.shape[0] < 2:
        raise ValueError(f"frames must be (T >= 2, H, W), got shape {tuple(frames.shape)}")
    stack = frames.to(torch.float32)
    device = stack.device
    shape = (stack.shape[-2], stack.shape[-1])
    if gain is not None:
        if tuple(gain.shape) != shape:
            raise ValueError(f"gain reference shape {tuple(gain.shape)} != frame shape {shape}")
        stack = stack * gain.to(stack)
    mask = torch.zeros(shape, dtype=torch.bool, device=stack.device)
    if defect_mask is not None:
        mask |= defect_mask.to(device=stack.device, dtype=torch.bool)
    if hot_pixel_sigma is not None:
        mask |= detect_hot_pixels(sum_frames(stack), hot_pixel_sigma)
    if bool(mask.any()):
        stack = replace_pixels(stack, mask)

    local = patches_x * patches_y > 1
    cutoff = alignment_cutoff_px(pixel_size_A, bfactor_A2, alignment_resolution_A)
    # With local alignment the sums come from warped frames, so the global alignment only needs
    # low frequencies: 2x2-binned frames (a quarter of the FFT work) hold them below 0.25 c/px.
    binned = local and cutoff <= 0.2 and shape[0] % 2 == 0 and shape[1] % 2 == 0
    scale = 2 if binned else 1
    source = F.avg_pool2d(stack[:, None], 2)[:, 0] if binned else stack
    source_shape = (shape[0] // scale, shape[1] // scale)
    full_ft = torch.fft.rfft2(source)
    spectra, ky, kx = _filtered_crop(
        full_ft, source_shape, pixel_size_A * scale, bfactor_A2, cutoff * scale
    )
    drift = scale * align_to_sum(
        spectra,
        source_shape,
        ky,
        kx,
        max_shift_px=max_shift_px / scale,
        max_iterations=max_iterations,
    )
    peak_z, n_window = peak_significance(
        spectra, drift / scale, source_shape, ky, kx, max_shift_px / scale
    )
    threshold = noise_peak_z(n_window) + 2.0 if min_peak_z is None else min_peak_z
    significant = bool(peak_z.median() >= threshold)
    if not significant:
        drift = torch.zeros_like(drift)
    else:
        drift = interpolate_weak_frames(drift, peak_z < threshold)
    del spectra, source
    weights = None
    if dose_per_frame_e_A2 is not None:
        pre = pre_exposure_e_A2 + first_frame * dose_per_frame_e_A2
        weights = _cached_dose_weight_factors(
            shape, pixel_size_A, frames.shape[0], dose_per_frame_e_A2, pre, voltage_kV, str(device)
        )

    model = centres = patch_shifts = None
    if local and significant:
        del full_ft
        size, _, centres = patch_grid(shape, patches_x, patches_y)
        patches, residual = shifted_patches(stack, (patches_y, patches_x), size, drift)
        p_spectra, p_ky, p_kx = alignment_spectra(patches, pixel_size_A, bfactor_A2, cutoff)
        del patches
        p_spectra = shift_spectra(p_spectra, -residual.to(p_kx), p_ky, p_kx)
        patch_shifts = align_to_sum(
            p_spectra, size, p_ky, p_kx, max_shift_px=min(size) / 4, max_iterations=max_iterations
        )
        del p_spectra
        terms = spatial_terms_for_grid(patches_x, patches_y)
        model = fit_motion_model(centres, patch_shifts.cpu(), shape, terms)
        aligned = warp_frames(stack, drift, model)
        del stack
        plain_ft, weighted_ft = weighted_sums_ft(torch.fft.rfft2(aligned), None, weights)
    else:
        if binned:  # the spectra were of the binned frames: the sums need the full ones
            full_ft = torch.fft.rfft2(stack)
        del stack
        plain_ft, weighted_ft = weighted_sums_ft(full_ft, -drift, weights, in_place=True)
    dw_sum = None
    if weighted_ft is not None:
        dw_sum = bin_image(torch.fft.irfft2(weighted_ft, s=shape), binning)
    return MovieAlignment(
        drift_px=drift.cpu().double(),
        model=model,
        patch_centres_px=centres,
        patch_shifts_px=None if patch_shifts is None else patch_shifts.cpu().double(),
        hot_pixels=int(mask.sum()),
        aligned_sum=bin_image(torch.fft.irfft2(plain_ft, s=shape), binning),
        dose_weighted_sum=dw_sum,
        pixel_size_A=binned_pixel_size(pixel_size_A, shape, binning),
        peak_z=peak_z.cpu().double(),
        min_peak_z=threshold,
        aligned=significant,
    )


def binned_pixel_size(pixel_size_A: float, shape: tuple[int, int], binning: float) -> float:
    """Pixel size after :func:`bin_image` of an ``(H, W)`` image (exact for the cropped width)."""
    if binning <= 1.0:
        return pixel_size_A
    w = shape[1]
    return pixel_size_A * w / (2 * round(w / binning / 2))


def _filtered_crop(
    full_ft: torch.Tensor,
    shape: tuple[int, int],
    pixel_size_A: float,
    bfactor_A2: float,
    cutoff_px: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cropped (to ``cutoff_px`` cycles/px), B-factor-filtered spectra and their axes."""
    cutoff = cutoff_px
    out_shape = (crop_size(shape[0], cutoff), crop_size(shape[1], cutoff))
    spectra = crop_rfft(full_ft, shape, out_shape)
    spectra[..., 0, 0] = 0  # the mean carries no shift information
    ky, kx = frequency_axes(shape, out_shape, full_ft.device, torch.float32)
    return spectra * bfactor_filter(ky, kx, pixel_size_A, bfactor_A2), ky, kx
