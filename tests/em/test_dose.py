"""Tests for cryostack.em.dose (Grant & Grigorieff 2015 exposure filter)."""

from __future__ import annotations

import math

import pytest
import torch

from cryostack.em import dose


def test_critical_exposure_values() -> None:
    k = torch.tensor([0.0, 0.1, 0.25, 0.5], dtype=torch.float64)
    ne = dose.critical_exposure(k)
    assert math.isinf(ne[0].item())
    # 0.245 * 0.1^-1.665 + 2.81 = 0.245 * 46.238 + 2.81
    assert ne[1].item() == pytest.approx(14.138, abs=2e-3)
    assert ne[3].item() == pytest.approx(0.245 * 0.5**-1.665 + 2.81, rel=1e-12)
    torch.testing.assert_close(dose.critical_exposure(k, 200.0)[1:], 0.8 * ne[1:])
    with pytest.raises(ValueError, match="voltage_kV=120"):
        dose.critical_exposure(k, 120.0)


def test_frame_exposures_mid_and_end() -> None:
    mid = dose.frame_exposures(4, 1.5, pre_exposure_e_A2=2.0)
    end = dose.frame_exposures(4, 1.5, pre_exposure_e_A2=2.0, dose_at="end")
    torch.testing.assert_close(mid, torch.tensor([2.75, 4.25, 5.75, 7.25]))
    torch.testing.assert_close(end, torch.tensor([3.5, 5.0, 6.5, 8.0]))


def test_dose_attenuation_at_known_frequency() -> None:
    n, px = 64, 1.0
    # pixel (row 0, column 16): k = 16 / (64 * 1 A) = 0.25 1/A
    ne = 0.245 * 0.25**-1.665 + 2.81
    att = dose.dose_attenuation(
        (n, n), px, torch.tensor([0.0, 2 * ne, 10.0], dtype=torch.float64), dtype=torch.float64
    )
    assert att.shape == (3, n, n // 2 + 1)
    assert att[0].min().item() == 1.0
    assert att[1, 0, 16].item() == pytest.approx(math.exp(-1.0), rel=1e-9)
    assert att[2, 0, 0].item() == 1.0
    # higher frequencies are attenuated more
    assert att[2, 0, 32].item() < att[2, 0, 16].item() < att[2, 0, 4].item()


def test_dose_weights_normalised_and_decreasing() -> None:
    w = dose.dose_weights((32, 48), 1.2, 20, 2.0, dtype=torch.float64)
    assert w.shape == (20, 32, 25)
    torch.testing.assert_close((w * w).sum(0), torch.ones(32, 25, dtype=torch.float64))
    # DC: no damage, equal weights; elsewhere later frames weigh less
    torch.testing.assert_close(
        w[:, 0, 0], torch.full((20,), 1 / math.sqrt(20), dtype=torch.float64)
    )
    assert (w[1:, 5, 7] < w[:-1, 5, 7]).all()
    ws = dose.dose_weights((32, 48), 1.2, 20, 2.0, normalise="sum", dtype=torch.float64)
    torch.testing.assert_close(ws.sum(0), torch.ones(32, 25, dtype=torch.float64))
    # value at a pixel by hand: row 0, column 12 -> k = 12 / (48 * 1.2)
    k = 12 / (48 * 1.2)
    ne = 0.245 * k**-1.665 + 2.81
    q = [math.exp(-(2.0 * (i + 0.5)) / (2 * ne)) for i in range(20)]
    expected = q[3] / math.sqrt(sum(v * v for v in q))
    assert w[3, 0, 12].item() == pytest.approx(expected, rel=1e-9)


def test_dose_weighting_improves_snr_over_plain_sum() -> None:
    """Signal decays as q_i, noise is white per frame: weighted sum has SNR >= plain sum."""
    shape, px, n_frames, per_frame = (64, 64), 1.0, 40, 1.25
    exposures = dose.frame_exposures(n_frames, per_frame, dtype=torch.float64)
    q = dose.dose_attenuation(shape, px, exposures, dtype=torch.float64)
    w = dose.dose_weights(shape, px, n_frames, per_frame, dtype=torch.float64)
    snr_weighted = (w * q).sum(0) ** 2 / (w * w).sum(0)
    snr_plain = q.sum(0) ** 2 / n_frames
    assert (snr_weighted >= snr_plain * (1 - 1e-12)).all()
    # at 3 A resolution (column 21 ~ 0.33 1/A) the gain is substantial for a 50 e/A^2 exposure
    assert (snr_weighted[0, 21] / snr_plain[0, 21]).item() > 1.5
