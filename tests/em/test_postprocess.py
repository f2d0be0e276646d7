"""Post-processing math: phase randomisation, mask-corrected FSC, Guinier B-factor, sharpening;
and agreement with ``relion_postprocess`` on the same half maps and mask."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import starfile
import torch

from cryostack.em.filters import bfactor_filter, low_pass
from cryostack.em.fsc import fsc, shell_frequencies, shell_indices, shell_sums
from cryostack.em.masks import mask_from_map
from cryostack.em.postprocess import (
    automatic_mask,
    corrected_fsc,
    first_shell_below,
    fit_guinier_bfactor,
    fsc_weights,
    guinier_points,
    mask_corrected_fsc,
    postprocess_half_maps,
    randomise_phases_beyond,
    shell_mean_amplitude,
)
from cryostack.io.mrc import write_mrc
from helpers import require_program

N = 64
PIXEL_A = 1.5


def pseudo_atoms(seed: int, bfactor_A2: float, n_atoms: int = 4000) -> torch.Tensor:
    """Point 'atoms' spread uniformly in a ball of radius 20 px, blurred by ``bfactor_A2``.

    Point scatterers have a flat mean amplitude spectrum (Wilson statistics), so the map's
    Guinier plot is a line of slope ``-B / 4``.
    """
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(4 * n_atoms, 3, generator=g) * 2 - 1
    points = points[points.norm(dim=1) < 1][:n_atoms] * 20 + N // 2
    zyx = points.round().long().flip(-1)
    volume = torch.zeros(N, N, N)
    volume.index_put_(tuple(zyx.T), torch.ones(len(zyx)), accumulate=True)
    return bfactor_filter(volume, bfactor_A2, PIXEL_A, ndim=3)


def half_maps(
    seed: int, noise: float = 0.1, cutoff_A: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truth (B = 100 Å², band-limited to ``cutoff_A``) and two half maps with white noise."""
    truth = low_pass(pseudo_atoms(seed, 100.0), cutoff_A, PIXEL_A, ndim=3, edge_width_shells=3)
    g = torch.Generator().manual_seed(seed + 100)
    half1 = truth + noise * torch.randn(N, N, N, generator=g)
    half2 = truth + noise * torch.randn(N, N, N, generator=g)
    return truth, half1, half2


def test_phase_randomisation_keeps_low_shells_and_amplitudes() -> None:
    volume = torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(0))
    shell = 6
    out = randomise_phases_beyond(volume, shell, torch.Generator().manual_seed(1))
    spectrum, randomised = torch.fft.rfftn(volume), torch.fft.rfftn(out)
    shells = shell_indices((32, 32, 32))
    low = shells <= shell
    assert torch.allclose(randomised[low], spectrum[low], atol=1e-3)
    # amplitudes kept, except on the kx = 0 / N/2 planes where Friedel pairs are merged
    interior = (shells > shell) & (shells <= 16)
    interior[..., 0] = False
    interior[..., -1] = False
    assert torch.allclose(randomised[interior].abs(), spectrum[interior].abs(), rtol=1e-3)
    # ... and the phases are new: beyond the shell the map no longer correlates with itself
    curve = fsc(volume, out)
    assert curve[: shell + 1].min() > 0.999
    assert curve[shell + 2 :].abs().max() < 0.1
    again = randomise_phases_beyond(volume, shell, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_corrected_fsc_formula_and_guard_shells() -> None:
    masked = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    randomised = torch.tensor([1.0, 0.9, 0.5, 0.4, 0.3, 0.2, 0.2])
    true = corrected_fsc(masked, randomised, randomise_from_shell=2)
    assert torch.allclose(true[:4], masked[:4])  # randomisation shell + 2 guard shells
    assert true[4] == pytest.approx((0.6 - 0.3) / (1 - 0.3))
    assert true[6] == pytest.approx(0.2 / 0.8)
    assert first_shell_below(masked, 0.75) == 3
    assert first_shell_below(masked, 0.1) == 7


def test_fsc_weights() -> None:
    curve = torch.tensor([1.0, 1.0, 0.5, 0.143, 0.05, 0.0, 0.3])
    w = fsc_weights(curve)
    assert w[1] == pytest.approx(1.0)
    assert w[2] == pytest.approx(math.sqrt(1.0 / 1.5))
    assert w[3] == pytest.approx(math.sqrt(0.286 / 1.143), rel=1e-4)
    assert w[5] == 0 and w[6] == 0  # zero from the first shell where the FSC reaches 0


def test_mask_correction_removes_the_correlation_a_tight_mask_creates() -> None:
    """Signal band-limited to 8 Å: beyond it the half maps share nothing. A tight mask that
    follows the density spreads low-resolution signal to high frequencies and inflates the
    masked FSC there; the corrected FSC falls to ~0 there, and crosses 0.143 within one shell
    of the ideal FSC of the masked half maps, ``S / (S + N_masked)`` from the known signal and
    noise powers."""
    truth, half1, half2 = half_maps(seed=0, noise=0.1, cutoff_A=8.0)
    tight = mask_from_map(truth, 0.4 * float(truth.max()), soft_edge_px=2.0)
    curves = mask_corrected_fsc(half1, half2, tight, generator=torch.Generator().manual_seed(2))
    assert curves.masked is not None and curves.randomised is not None
    beyond = torch.arange(N // 2 + 1) >= 15  # past the 8 Å cut-off and its 3-shell edge
    assert curves.masked[beyond].mean() > 0.12  # spurious correlation from the mask
    assert curves.corrected[beyond].mean().abs() < 0.04
    shells = shell_indices((N, N, N))
    signal = shell_sums(torch.fft.rfftn(truth).abs() ** 2, shells, N // 2 + 1)
    noise = shell_sums(torch.fft.rfftn((half1 - truth) * tight).abs() ** 2, shells, N // 2 + 1)
    ideal = signal / (signal + noise)
    assert abs(first_shell_below(curves.corrected, 0.143) - first_shell_below(ideal, 0.143)) <= 1
    assert curves.used_mask


def test_guinier_fit_recovers_the_map_bfactor() -> None:
    volume = pseudo_atoms(seed=1, bfactor_A2=120.0)
    s2, ln_amplitude = guinier_points(volume, PIXEL_A)
    bfactor, _, n_points = fit_guinier_bfactor(s2, ln_amplitude, 10.0, 3.5)
    assert bfactor == pytest.approx(-120.0, rel=0.08)
    assert n_points == 18  # shells 10 (9.6 Å) .. 27 (3.56 Å)
    with pytest.raises(ValueError, match="too few to fit a B-factor"):
        fit_guinier_bfactor(s2, ln_amplitude, 10.0, 9.0)


def test_postprocess_resolution_sharpening_and_low_pass() -> None:
    truth, half1, half2 = half_maps(seed=2, noise=0.1)
    mask = automatic_mask(truth, PIXEL_A)
    result = postprocess_half_maps(
        half1, half2, PIXEL_A, mask, generator=torch.Generator().manual_seed(0)
    )
    # the truth is band-limited to 5 Å (3-shell edge): resolution within a shell of it
    assert abs(N * PIXEL_A / result.resolution_A - N * PIXEL_A / 5.0) <= 1.0
    assert result.bfactor_fitted and -140 < result.bfactor_A2 < -70
    # sharpening flattens the Guinier plot over the fitted range
    s2 = result.guinier_s2_invA2
    flat, _, _ = fit_guinier_bfactor(s2, result.guinier_ln_amplitude[2], 10.0, result.resolution_A)
    assert abs(flat) < 15
    # low-pass at the final resolution: (almost) no power beyond it
    amplitude = shell_mean_amplitude(result.sharpened)
    beyond = shell_frequencies(N, PIXEL_A) > 1 / result.resolution_A + 1.5 / (N * PIXEL_A)
    assert amplitude[beyond].max() < 1e-3 * amplitude[1:10].mean()
    # a given B-factor and low-pass are applied as given
    given = postprocess_half_maps(
        half1,
        half2,
        PIXEL_A,
        mask,
        bfactor_A2=-50.0,
        low_pass_A=8.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert given.bfactor_A2 == -50.0 and not given.bfactor_fitted and given.low_pass_A == 8.0
    assert given.resolution_A == pytest.approx(result.resolution_A)


def test_unmasked_fsc_is_used_when_the_mask_cuts_density() -> None:
    _, half1, half2 = half_maps(seed=3, noise=0.1)
    small = torch.zeros(N, N, N)
    small[:8, :8, :8] = 1.0  # a corner of solvent: the mask misses the particle
    curves = mask_corrected_fsc(half1, half2, small, generator=torch.Generator().manual_seed(0))
    assert not curves.used_mask
    assert torch.equal(curves.corrected, curves.unmasked)


def test_bad_inputs_are_named() -> None:
    volume = torch.zeros(16, 16, 16)
    with pytest.raises(ValueError, match="half maps differ in shape"):
        mask_corrected_fsc(volume, torch.zeros(8, 8, 8), None)
    with pytest.raises(ValueError, match="mask of shape"):
        mask_corrected_fsc(volume, volume, torch.zeros(8, 8, 8))
    with pytest.raises(ValueError, match="cubic"):
        postprocess_half_maps(torch.zeros(8, 8, 4), torch.zeros(8, 8, 4), 1.0)
    with pytest.raises(ValueError, match="mask would be empty"):
        automatic_mask(torch.zeros(16, 16, 16), 1.0, threshold=0.5)
    with pytest.raises(ValueError, match="no positive density"):
        automatic_mask(-torch.ones(16, 16, 16), 1.0)


def test_agrees_with_relion_postprocess(tmp_path: Path) -> None:
    """Same half maps and mask through ``relion_postprocess``: final resolution within one
    Fourier shell; B-factor (fitted over the same range) within 20 %."""
    program = require_program("relion_postprocess")
    truth, half1, half2 = half_maps(seed=4, noise=0.1)
    mask = automatic_mask(truth, PIXEL_A)
    for name, volume in (("half1", half1), ("half2", half2), ("mask", mask)):
        write_mrc(tmp_path / f"{name}.mrc", volume.numpy(), PIXEL_A)
    ours = postprocess_half_maps(
        half1, half2, PIXEL_A, mask, generator=torch.Generator().manual_seed(0)
    )
    (tmp_path / "out").mkdir()
    command = [
        program, "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc",
        "--angpix", str(PIXEL_A), "--auto_bfac", "--autob_lowres", "10",
        "--autob_highres", f"{ours.resolution_A:.4f}", "--o", "out/postprocess",
    ]  # fmt: skip
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    general = starfile.read(tmp_path / "out" / "postprocess.star")["general"]
    relion_shell = N * PIXEL_A / float(general["rlnFinalResolution"])
    # RELION reports the last shell at or above 0.143; ours interpolates the crossing
    assert abs(relion_shell - ours.resolution_shell) <= 1
    assert abs(N * PIXEL_A / ours.resolution_A - relion_shell) <= 1.0
    relion_b = float(general["rlnBfactorUsedForSharpening"])
    assert ours.bfactor_A2 == pytest.approx(relion_b, rel=0.2)
