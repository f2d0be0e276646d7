"""Fourier shell/ring correlation and threshold resolution."""

from __future__ import annotations

import math

import torch

from cryostack.em.fsc import frc, fsc, resolution_at_threshold, shell_frequencies, shell_indices


def test_fsc_of_identical_and_independent_maps() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 32, 32, generator=g)
    b = torch.randn(32, 32, 32, generator=g)
    assert torch.allclose(fsc(a, a), torch.ones(17), atol=1e-5)
    curve = fsc(a, b)
    assert curve.shape == (17,)
    assert curve[2:].abs().max() < 0.2  # independent noise: ~ 1/sqrt(voxels per shell)
    assert torch.allclose(fsc(a, -3 * a), -torch.ones(17), atol=1e-5)


def test_fsc_of_signal_plus_noise_matches_expected_snr_relation() -> None:
    g = torch.Generator().manual_seed(1)
    signal = torch.randn(2, 40, 40, 40, generator=g)  # batched
    half1 = signal + torch.randn(signal.shape, generator=g)
    half2 = signal + torch.randn(signal.shape, generator=g)
    curve = fsc(half1, half2)
    assert curve.shape == (2, 21)
    # white signal and noise of equal power: FSC = SNR / (1 + SNR) = 0.5 in every shell
    assert (curve[:, 6:] - 0.5).abs().max() < 0.1
    assert (curve[:, 6:].mean() - 0.5).abs() < 0.01


def test_frc_is_batched_over_images() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.randn(5, 24, 24, generator=g)
    assert torch.allclose(frc(images, images), torch.ones(5, 13), atol=1e-5)


def test_shell_convention_and_frequencies() -> None:
    shells = shell_indices((16, 16, 16))
    assert shells.shape == (16, 16, 9)
    assert shells[0, 0, 0] == 0 and shells[0, 0, 3] == 3 and shells[3, 4, 0] == 5
    assert shells[1, 1, 1] == round(math.sqrt(3))
    freqs = shell_frequencies(16, pixel_size_A=2.0)
    assert math.isclose(freqs[-1].item(), 0.25) and math.isclose(freqs[4].item(), 4 / 32)


def test_resolution_at_threshold_interpolates_between_shells() -> None:
    freqs = shell_frequencies(8, pixel_size_A=1.5)  # shells 0..4
    curve = torch.tensor([1.0, 0.9, 0.5, 0.1, 0.0])
    # crosses 0.143 between shell 2 (0.5) and 3 (0.1): t = (0.5 - 0.143) / 0.4
    expected_freq = freqs[2] + (0.5 - 0.143) / 0.4 * (freqs[3] - freqs[2])
    res = resolution_at_threshold(curve, freqs)
    assert math.isclose(res.item(), 1 / expected_freq.item(), rel_tol=1e-5)
    assert math.isclose(
        resolution_at_threshold(curve, freqs, threshold=0.5).item(),
        1 / freqs[2].item(),
        rel_tol=1e-5,
    )
    # never crosses: Nyquist (2 * pixel size); batched input
    batch = torch.stack([curve, torch.ones(5)])
    out = resolution_at_threshold(batch, freqs)
    assert out.shape == (2,) and math.isclose(out[1].item(), 3.0, rel_tol=1e-6)
