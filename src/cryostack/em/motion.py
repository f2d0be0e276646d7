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

Layout: this module holds the global alignment and :func:`align_movie`; the local motion model
and patch handling are in :mod:`cryostack.em.motion_model`, hot pixels, spectra and sums in
:mod:`cryostack.em.motion_sums`. Their public names are re-exported here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryostack.em.motion_model import (
    MotionModel,
    alignment_spectra,
    edge_taper,
    evaluate_motion_model,
    fit_motion_model,
    patch_grid,
    shifted_patches,
    spatial_terms_for_grid,
    warp_frames,
)
from cryostack.em.motion_sums import (
    _cached_dose_weight_factors,
    alignment_cutoff_px,
    bfactor_cutoff_px,
    bfactor_filter,
    bin_image,
    binned_pixel_size,
    crop_rfft,
    crop_size,
    detect_hot_pixels,
    dose_weight_factors,
    frequency_axes,
    replace_pixels,
    shift_spectra,
    sum_frames,
    weighted_sums_ft,
)

__all__ = [
    "MotionModel",
    "MovieAlignment",
    "align_movie",
    "align_to_sum",
    "alignment_cutoff_px",
    "alignment_spectra",
    "bfactor_cutoff_px",
    "bfactor_filter",
    "bin_image",
    "binned_pixel_size",
    "coarse_peak",
    "crop_rfft",
    "crop_size",
    "detect_hot_pixels",
    "dose_weight_factors",
    "edge_taper",
    "evaluate_motion_model",
    "fit_motion_model",
    "frequency_axes",
    "interpolate_weak_frames",
    "newton_basis",
    "newton_step",
    "noise_peak_z",
    "patch_grid",
    "peak_significance",
    "replace_pixels",
    "shift_spectra",
    "shifted_patches",
    "spatial_terms_for_grid",
    "sum_frames",
    "warp_frames",
    "weighted_sums_ft",
]


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
