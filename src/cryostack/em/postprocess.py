"""Map post-processing from two half maps: mask-corrected FSC, B-factor sharpening, filtering.

The steps follow RELION's post-processing (Chen et al. 2013; Rosenthal & Henderson 2003):

1. FSC of the unmasked half maps, and of the half maps multiplied by the mask.
2. The mask's own contribution to the masked FSC is measured by randomising the phases of both
   half maps beyond the first shell where the unmasked FSC drops below 0.8 (the signal there is
   then uncorrelated by construction), masking them, and computing their FSC. The corrected curve
   is ``FSC_true = (FSC_masked - FSC_randomised) / (1 - FSC_randomised)`` from two shells past
   the randomisation shell (nearer shells keep ``FSC_masked``: the randomisation edge leaves small
   artefacts there).
3. The final resolution is where ``FSC_true`` falls below 0.143.
4. The average of the two half maps is weighted per shell by ``sqrt(2 FSC / (1 + FSC))``, a
   straight line is fitted to ``ln |F|`` (mean amplitude per shell) against ``1 / d²`` between
   10 Å and the final resolution, and the map is multiplied by ``exp(-B s² / 4)`` with
   ``B = 4 · slope`` (negative: sharpening; the same sign as RELION's
   ``rlnBfactorUsedForSharpening`` and :func:`cryostack.em.filters.bfactor_filter`).
5. The sharpened map is low-pass filtered at the final resolution (raised-cosine edge).

Difference from ``relion_postprocess --auto_bfac`` (3.1): with ``--autob_highres 0`` (its
default) RELION fits every shell from 10 Å whose FSC-weighted amplitude is non-zero, i.e. up to
where the corrected FSC first drops below 1e-4, beyond the final resolution; the shells past the
resolution have small weights and steepen the fit (on test maps: B = -240 Å² against -100 Å²
fitted to the final resolution). Here the fit stops at the final resolution, as the project's
conventions say; given the same range (``--autob_highres`` = our resolution) the two agree
within the scatter of the random phases (a few %).

Shells follow :mod:`cryostack.em.fsc` (shell ``round(|k| N)``, ``0 .. N // 2``, rfft half).
Volumes are ``(N, N, N)`` real tensors; everything runs on the half maps' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryostack.em.filters import low_pass
from cryostack.em.fsc import (
    fsc,
    resolution_at_threshold,
    shell_frequencies,
    shell_indices,
    shell_sums,
)
from cryostack.em.masks import mask_from_map

GUARD_SHELLS = 2
"""Shells past the randomisation shell where the corrected FSC still keeps the masked FSC."""


def _check_volume(volume: torch.Tensor, name: str) -> int:
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"{name} must be a cubic (N, N, N) map, got shape {tuple(volume.shape)}")
    return int(volume.shape[0])


def randomise_phases_beyond(
    volume: torch.Tensor, shell: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace the phases of all Fourier components beyond ``shell`` by uniform random phases.

    Amplitudes are kept. Components of shell index ``> shell`` (``round(|k| N)``) are changed;
    lower shells are untouched. The rfft layout holds both members of the Friedel pairs on its
    ``kx = 0`` and ``kx = N / 2`` planes; the inverse transform keeps only their Hermitian part
    (as RELION's in-place randomisation does), so amplitudes there shrink a little on average.

    Args:
        volume: ``(..., N, N, N)`` real maps.
        shell: last shell (index) kept as it is.
        generator: random generator (its device is used to draw the phases).

    Returns:
        ``(..., N, N, N)`` real maps with randomised high-frequency phases.
    """
    shape = tuple(volume.shape[-3:])
    dims = (-3, -2, -1)
    spectrum = torch.fft.rfftn(volume.float(), dim=dims)
    beyond = shell_indices(shape, device=volume.device) > shell
    draw_device = generator.device if generator is not None else volume.device
    phases = torch.rand(
        spectrum.shape, generator=generator, device=draw_device, dtype=torch.float32
    ).to(volume.device)
    angle = 2.0 * math.pi * phases
    amplitude = spectrum.abs()
    random = torch.complex(amplitude * torch.cos(angle), amplitude * torch.sin(angle))
    spectrum = torch.where(beyond, random, spectrum)
    return torch.fft.irfftn(spectrum, s=shape, dim=dims).to(volume.dtype)


def first_shell_below(curve: torch.Tensor, threshold: float) -> int:
    """First shell ``>= 1`` whose value is below ``threshold``; ``len(curve)`` if none."""
    below = torch.nonzero(curve[1:] < threshold)
    return int(below[0, 0]) + 1 if below.numel() else int(curve.shape[-1])


def last_shell_at_or_above(curve: torch.Tensor, threshold: float) -> int:
    """Last shell before the curve first falls below ``threshold`` (RELION's resolution shell)."""
    return first_shell_below(curve, threshold) - 1


def corrected_fsc(
    fsc_masked: torch.Tensor,
    fsc_randomised: torch.Tensor,
    randomise_from_shell: int,
    guard_shells: int = GUARD_SHELLS,
) -> torch.Tensor:
    """``(FSC_masked - FSC_rand) / (1 - FSC_rand)`` from ``randomise_from_shell + guard_shells``.

    Shells below that keep ``FSC_masked``. Both curves are ``(n_shells,)``; returns the same.
    """
    start = randomise_from_shell + guard_shells
    index = torch.arange(fsc_masked.shape[-1], device=fsc_masked.device)
    denominator = (1.0 - fsc_randomised).clamp_min(1e-6)
    true = (fsc_masked - fsc_randomised) / denominator
    return torch.where(index < start, fsc_masked, true)


@dataclass(frozen=True)
class MaskedFSC:
    """FSC curves of a post-processing run, all ``(N // 2 + 1,)`` over shells.

    Attributes:
        unmasked: FSC of the half maps as they are.
        masked: FSC of the masked half maps (``None`` without a mask).
        randomised: FSC of the masked half maps with phases randomised beyond
            ``randomise_from_shell`` (``None`` without a mask).
        corrected: the mask-corrected ``FSC_true`` (the unmasked FSC without a mask, or where
            the unmasked FSC reaches further than the corrected one: see ``used_mask``).
        randomise_from_shell: shell beyond which phases were randomised (-1 without a mask).
        used_mask: False when no mask was given or when the corrected curve was replaced by
            the unmasked one because the unmasked resolution was better (a mask that cuts
            density).
    """

    unmasked: torch.Tensor
    masked: torch.Tensor | None
    randomised: torch.Tensor | None
    corrected: torch.Tensor
    randomise_from_shell: int
    used_mask: bool


def mask_corrected_fsc(
    half1: torch.Tensor,
    half2: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    randomise_below_fsc: float = 0.8,
    randomise_from_shell: int | None = None,
    generator: torch.Generator | None = None,
    threshold: float = 0.143,
) -> MaskedFSC:
    """Unmasked, masked, phase-randomised and corrected FSC of two ``(N, N, N)`` half maps.

    Args:
        half1, half2: the half maps.
        mask: ``(N, N, N)`` soft mask in [0, 1], or None (then ``corrected`` is the unmasked FSC).
        randomise_below_fsc: randomise phases beyond the first shell where the unmasked FSC
            falls below this value.
        randomise_from_shell: use this shell instead (overrides ``randomise_below_fsc``).
        generator: random generator for the phases (determinism).
        threshold: FSC threshold of the resolution, used to decide whether the mask helps.

    Raises:
        ValueError: shapes differ, or the unmasked FSC never drops below ``randomise_below_fsc``.
    """
    n = _check_volume(half1, "half map 1")
    if half2.shape != half1.shape:
        raise ValueError(f"half maps differ in shape: {tuple(half1.shape)} vs {tuple(half2.shape)}")
    unmasked = fsc(half1, half2)
    if mask is None:
        return MaskedFSC(unmasked, None, None, unmasked, -1, False)
    if mask.shape != half1.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} differs from the half maps' {(n,) * 3}"
        )
    mask = mask.to(half1)
    masked = fsc(half1 * mask, half2 * mask)
    shell = randomise_from_shell
    if shell is None:
        shell = first_shell_below(unmasked, randomise_below_fsc)
        if shell >= unmasked.shape[-1]:
            raise ValueError(
                f"the unmasked FSC never drops below {randomise_below_fsc}: cannot choose where "
                "to randomise phases (give randomise_from_shell)"
            )
    random1 = randomise_phases_beyond(half1, shell, generator) * mask
    random2 = randomise_phases_beyond(half2, shell, generator) * mask
    randomised = fsc(random1, random2)
    corrected = corrected_fsc(masked, randomised, shell)
    used = last_shell_at_or_above(unmasked, threshold) <= last_shell_at_or_above(
        corrected, threshold
    )
    return MaskedFSC(unmasked, masked, randomised, corrected if used else unmasked, shell, used)


def shell_mean_amplitude(volume: torch.Tensor) -> torch.Tensor:
    """Mean amplitude ``|F|`` per shell of ``(..., N, N, N)`` maps -> ``(..., N // 2 + 1)``."""
    n = int(volume.shape[-1])
    spectrum = torch.fft.rfftn(volume.float(), dim=(-3, -2, -1))
    shells = shell_indices((n, n, n), device=volume.device)
    n_shells = n // 2 + 1
    sums = shell_sums(spectrum.abs(), shells, n_shells)
    counts = torch.bincount(shells.reshape(-1), minlength=n_shells)[:n_shells].to(sums)
    return sums / counts.clamp_min(1)


def guinier_points(volume: torch.Tensor, pixel_size_A: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Guinier plot of a ``(N, N, N)`` map: ``(1/d² in 1/Å², ln mean |F|)`` per shell ``1 .. N//2``.

    Shells whose mean amplitude is 0 get ``-inf``.
    """
    n = _check_volume(volume, "map")
    amplitude = shell_mean_amplitude(volume)[1:]
    s = shell_frequencies(n, pixel_size_A, device=volume.device)[1:]
    return s**2, torch.log(amplitude)


def fit_guinier_bfactor(
    s2_invA2: torch.Tensor,
    ln_amplitude: torch.Tensor,
    low_resolution_A: float,
    high_resolution_A: float,
) -> tuple[float, float, int]:
    """Least-squares line through the Guinier points between two resolutions.

    Points with ``high_resolution_A <= d <= low_resolution_A`` (``d = 1 / sqrt(s²)``) and a finite
    ``ln |F|`` are used.

    Returns:
        ``(bfactor_A2, intercept, n_points)``: ``bfactor_A2 = 4 · slope`` is the B-factor that
        flattens the plot when applied with ``exp(-B s² / 4)`` (negative for a decaying map),
        ``intercept`` the fitted ``ln |F|`` at ``s = 0``.

    Raises:
        ValueError: fewer than 3 points lie in the range.
    """
    lo = 1.0 / low_resolution_A**2
    hi = 1.0 / high_resolution_A**2
    x = s2_invA2.double()
    y = ln_amplitude.double()
    use = (x >= lo * (1 - 1e-9)) & (x <= hi * (1 + 1e-9)) & torch.isfinite(y)
    n_points = int(use.sum())
    if n_points < 3:
        raise ValueError(
            f"only {n_points} Guinier points between {low_resolution_A:.2f} and "
            f"{high_resolution_A:.2f} Å: too few to fit a B-factor (give one instead)"
        )
    x, y = x[use], y[use]
    xm, ym = x.mean(), y.mean()
    slope = ((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum()
    intercept = ym - slope * xm
    return float(4.0 * slope), float(intercept), n_points


def fsc_weights(fsc_curve: torch.Tensor) -> torch.Tensor:
    """Per-shell weights ``sqrt(2 FSC / (1 + FSC))`` (Rosenthal & Henderson 2003).

    Weights are 0 from the first shell where the FSC drops below 1e-4 onwards (as RELION does),
    so noise beyond the resolution limit is removed. ``(n_shells,)`` -> ``(n_shells,)``.
    """
    curve = fsc_curve.clamp(0.0, 1.0)
    weights = torch.sqrt(2.0 * curve / (1.0 + curve))
    cut = first_shell_below(fsc_curve, 1e-4)
    index = torch.arange(curve.shape[-1], device=curve.device)
    weights = torch.where(index >= cut, torch.zeros_like(weights), weights)
    weights[0] = 1.0
    return weights


def apply_shell_weights(volume: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multiply the Fourier components of ``(..., N, N, N)`` maps by ``weights[shell]``.

    ``weights`` is ``(N // 2 + 1,)``; components beyond Nyquist (corners) get weight 0.
    """
    n = int(volume.shape[-1])
    shape = (n, n, n)
    shells = shell_indices(shape, device=volume.device)
    padded = torch.cat([weights.to(volume.device, torch.float32), weights.new_zeros(1).float()])
    per_voxel = padded[shells.clamp_max(weights.shape[-1])]
    spectrum = torch.fft.rfftn(volume.float(), dim=(-3, -2, -1))
    out = torch.fft.irfftn(spectrum * per_voxel, s=shape, dim=(-3, -2, -1))
    return out.to(volume.dtype)


def bfactor_spectrum_filter(
    volume: torch.Tensor, bfactor_A2: float, pixel_size_A: float
) -> torch.Tensor:
    """Multiply by ``exp(-B s² / 4)`` per shell (shell frequency ``i / (N · pixel)``)."""
    n = int(volume.shape[-1])
    s = shell_frequencies(n, pixel_size_A, device=volume.device)
    return apply_shell_weights(volume, torch.exp(-bfactor_A2 * s**2 / 4.0))


@dataclass(frozen=True)
class PostprocessResult:
    """What :func:`postprocess_half_maps` finds and makes.

    Attributes:
        fsc: the FSC curves (:class:`MaskedFSC`).
        frequencies_invA: ``(N // 2 + 1,)`` shell frequencies.
        resolution_A: final resolution (corrected FSC at 0.143, interpolated between shells).
        resolution_shell: RELION's resolution shell: the last shell before the corrected FSC
            first drops below 0.143 (its resolution ``N · pixel / shell`` is what RELION reports).
        bfactor_A2: B-factor applied (``exp(-B s² / 4)``; negative sharpens).
        bfactor_fitted: True when the B-factor came from the Guinier fit.
        guinier_intercept: intercept of the fit (NaN when the B-factor was given).
        guinier_fit_range_A: (low, high) resolution range of the fit, Å.
        guinier_s2_invA2: ``(N // 2,)`` 1/d² of shells ``1 .. N // 2``.
        guinier_ln_amplitude: ``(3, N // 2)`` ln mean |F| of the average map, the FSC-weighted
            map and the sharpened map.
        low_pass_A: resolution of the final low-pass filter (0: none).
        sharpened: ``(N, N, N)`` sharpened, low-passed map (unmasked).
        average: ``(N, N, N)`` average of the half maps.
    """

    fsc: MaskedFSC
    frequencies_invA: torch.Tensor
    resolution_A: float
    resolution_shell: int
    bfactor_A2: float
    bfactor_fitted: bool
    guinier_intercept: float
    guinier_fit_range_A: tuple[float, float]
    guinier_s2_invA2: torch.Tensor
    guinier_ln_amplitude: torch.Tensor
    low_pass_A: float
    sharpened: torch.Tensor
    average: torch.Tensor


def postprocess_half_maps(
    half1: torch.Tensor,
    half2: torch.Tensor,
    pixel_size_A: float,
    mask: torch.Tensor | None = None,
    *,
    bfactor_A2: float | None = None,
    fit_low_resolution_A: float = 10.0,
    fit_high_resolution_A: float | None = None,
    low_pass_A: float | None = None,
    fsc_weighting: bool = True,
    randomise_below_fsc: float = 0.8,
    generator: torch.Generator | None = None,
    threshold: float = 0.143,
    edge_width_shells: float = 2.0,
) -> PostprocessResult:
    """Mask-corrected FSC, resolution, B-factor sharpening and low-pass of two half maps.

    Args:
        half1, half2: ``(N, N, N)`` half maps.
        pixel_size_A: voxel size, Å.
        mask: ``(N, N, N)`` soft mask, or None.
        bfactor_A2: B-factor to apply (negative sharpens); None: fit it (Guinier plot of the
            FSC-weighted map, from ``fit_low_resolution_A`` to ``fit_high_resolution_A``,
            default the final resolution).
        low_pass_A: low-pass resolution; None: the final resolution; 0: no low-pass.
        fsc_weighting: weight shells by ``sqrt(2 FSC / (1 + FSC))``.
        randomise_below_fsc: see :func:`mask_corrected_fsc`.
        generator: random generator of the phase randomisation.
        threshold: FSC threshold of the resolution.
        edge_width_shells: raised-cosine edge of the low-pass, in shells.
    """
    n = _check_volume(half1, "half map 1")
    curves = mask_corrected_fsc(
        half1,
        half2,
        mask,
        randomise_below_fsc=randomise_below_fsc,
        generator=generator,
        threshold=threshold,
    )
    freqs = shell_frequencies(n, pixel_size_A, device=half1.device)
    resolution = float(resolution_at_threshold(curves.corrected, freqs, threshold))
    resolution_shell = last_shell_at_or_above(curves.corrected, threshold)
    average = 0.5 * (half1.float() + half2.float())
    s2, ln_in = guinier_points(average, pixel_size_A)
    weighted = (
        apply_shell_weights(average, fsc_weights(curves.corrected)) if fsc_weighting else average
    )
    _, ln_weighted = guinier_points(weighted, pixel_size_A)
    fit_high = fit_high_resolution_A if fit_high_resolution_A is not None else resolution
    intercept = math.nan
    fitted = bfactor_A2 is None
    if bfactor_A2 is None:
        bfactor_A2, intercept, _ = fit_guinier_bfactor(
            s2, ln_weighted, fit_low_resolution_A, fit_high
        )
    sharpened = bfactor_spectrum_filter(weighted, bfactor_A2, pixel_size_A)
    _, ln_sharp = guinier_points(sharpened, pixel_size_A)
    applied_low_pass = resolution if low_pass_A is None else low_pass_A
    if applied_low_pass > 0:
        sharpened = low_pass(
            sharpened, applied_low_pass, pixel_size_A, ndim=3, edge_width_shells=edge_width_shells
        )
    return PostprocessResult(
        fsc=curves,
        frequencies_invA=freqs,
        resolution_A=resolution,
        resolution_shell=resolution_shell,
        bfactor_A2=float(bfactor_A2),
        bfactor_fitted=fitted,
        guinier_intercept=intercept,
        guinier_fit_range_A=(fit_low_resolution_A, fit_high),
        guinier_s2_invA2=s2,
        guinier_ln_amplitude=torch.stack([ln_in, ln_weighted, ln_sharp]),
        low_pass_A=float(applied_low_pass),
        sharpened=sharpened,
        average=average,
    )


AUTO_MASK_FRACTION = 0.15
"""Automatic mask threshold: this fraction of the maximum of the low-passed map."""


def automatic_mask(
    volume: torch.Tensor,
    pixel_size_A: float,
    *,
    threshold: float | None = None,
    extend_px: float = 3.0,
    soft_edge_px: float = 6.0,
    low_pass_A: float = 15.0,
) -> torch.Tensor:
    """Soft solvent mask of a ``(N, N, N)`` map, as ``relion_mask_create`` makes one.

    The map is low-pass filtered to ``low_pass_A``, thresholded (``threshold``; None: 15 % of
    the low-passed map's maximum), the binary mask extended by ``extend_px`` and given a
    raised-cosine edge ``soft_edge_px`` wide.

    Raises:
        ValueError: the threshold leaves no voxel in the mask, or (automatic threshold) the
            map has no positive density.
    """
    smooth = low_pass(volume.float(), low_pass_A, pixel_size_A, ndim=3)
    if threshold is None and float(smooth.max()) <= 0:
        raise ValueError("the map has no positive density: cannot choose a mask threshold")
    level = AUTO_MASK_FRACTION * float(smooth.max()) if threshold is None else threshold
    if not bool((smooth >= level).any()):
        raise ValueError(
            f"mask threshold {level:g} is above the {low_pass_A:g} Å low-passed map's maximum "
            f"{float(smooth.max()):g}: the mask would be empty"
        )
    return mask_from_map(smooth, level, extend_px=extend_px, soft_edge_px=soft_edge_px)
