"""Scoring functions on constructed cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from cryostack.em import scoring
from cryostack.em.rotations import matrix_to_euler, random_rotations
from cryostack.em.symmetry import symmetry_matrices


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- CTF ----------------------------------------------------------------------------------------


def test_defocus_errors_perfect_and_known_offset() -> None:
    u, v, a = _t(15000.0, 20000.0), _t(14000.0, 19800.0), _t(30.0, 100.0)
    perfect = scoring.defocus_errors(u, v, a, u, v, a)
    for field in perfect.__dict__.values():
        assert torch.equal(field, torch.zeros(2, dtype=torch.float64))
    shifted = scoring.defocus_errors(u + 500, v + 500, a + 7, u, v, a)
    torch.testing.assert_close(shifted.mean_defocus_error_A, _t(500.0, 500.0))
    torch.testing.assert_close(shifted.mean_defocus_error_percent, _t(500 / 145, 500 / 199))
    torch.testing.assert_close(shifted.astigmatism_error_A, _t(0.0, 0.0))
    torch.testing.assert_close(shifted.angle_error_deg, _t(7.0, 7.0))
    more_astig = scoring.defocus_errors(u + 100, v - 100, a, u, v, a)
    torch.testing.assert_close(more_astig.mean_defocus_error_A, _t(0.0, 0.0))
    torch.testing.assert_close(more_astig.astigmatism_error_A, _t(200.0, 200.0))


def test_defocus_errors_see_through_u_v_swap_and_angle_modulo_180() -> None:
    u, v, a = _t(15000.0), _t(14000.0), _t(10.0)
    swapped = scoring.defocus_errors(v, u, a + 90.0, u, v, a)  # the same CTF written the other way
    assert float(swapped.mean_defocus_error_A) == 0.0
    assert float(swapped.astigmatism_error_A) == 0.0
    assert float(swapped.angle_error_deg) == pytest.approx(0.0, abs=1e-9)
    wrapped = scoring.defocus_errors(u, v, _t(190.0), u, v, a)
    assert float(wrapped.angle_error_deg) == pytest.approx(0.0, abs=1e-9)
    across = scoring.defocus_errors(u, v, _t(175.0), u, v, a)
    assert float(across.angle_error_deg) == pytest.approx(15.0)
    assert float(scoring.angle_difference_mod180_deg(_t(0.0), _t(90.0))) == 90.0


# --- drift --------------------------------------------------------------------------------------


def test_drift_rmse_removes_constant_offset_and_measures_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    true = torch.cumsum(torch.randn(12, 2, generator=g, dtype=torch.float64), dim=0)
    assert float(scoring.drift_rmse_px(true, true)) == 0.0
    offset = true + _t(5.0, -3.0)  # another reference frame
    assert float(scoring.drift_rmse_px(offset, true)) == pytest.approx(0.0, abs=1e-12)
    wobble = torch.zeros(12, 2, dtype=torch.float64)
    wobble[:, 0] = torch.tensor([1.0, -1.0] * 6)  # zero mean, 1 px off in x on every frame
    assert float(scoring.drift_rmse_px(true + wobble + 2.0, true)) == pytest.approx(1.0)
    batched = scoring.drift_rmse_px(torch.stack([true, true + wobble]), torch.stack([true, true]))
    torch.testing.assert_close(batched, _t(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(\.\.\., T, 2\)"):
        scoring.drift_rmse_px(true[:5], true)


# --- picking ------------------------------------------------------------------------------------


def test_picking_perfect_offsets_and_false_picks() -> None:
    truth = torch.tensor([[10.0, 10.0], [50.0, 10.0], [10.0, 50.0], [50.0, 50.0]])
    perfect = scoring.picking_scores(truth.flip(0), truth, radius_px=5.0)
    assert (perfect.precision, perfect.recall, perfect.f1) == (1.0, 1.0, 1.0)
    near = truth + torch.tensor([3.0, -2.0])  # 3.6 px away: inside a 5 px radius, not a 3 px one
    assert scoring.picking_scores(near, truth, 5.0).f1 == 1.0
    assert scoring.picking_scores(near, truth, 3.0).n_true_positive == 0
    picks = torch.cat([truth[:3], torch.tensor([[90.0, 90.0], [30.0, 30.0]])])
    s = scoring.picking_scores(picks, truth, 5.0)
    assert (s.n_true_positive, s.n_predicted, s.n_true) == (3, 5, 4)
    assert s.precision == pytest.approx(0.6)
    assert s.recall == pytest.approx(0.75)
    assert s.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)


def test_matching_is_one_to_one_and_greedy_by_distance() -> None:
    truth = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    picks = torch.tensor([[1.0, 0.0], [1.5, 0.0], [20.0, 0.0]])
    p, t = scoring.match_points(picks, truth, radius_px=3.0)
    assert p.tolist() == [0, 1] and t.tolist() == [0, 1]  # (0,0) pair first (1 px), then 2.5 px
    duplicate = scoring.picking_scores(torch.tensor([[0.0, 0.0], [0.5, 0.0]]), truth[:1], 3.0)
    assert duplicate.n_true_positive == 1 and duplicate.precision == 0.5
    empty = torch.empty(0, 2)
    assert scoring.picking_scores(empty, empty, 3.0).f1 == 1.0
    assert scoring.picking_scores(empty, truth, 3.0).recall == 0.0
    assert scoring.picking_scores(empty, truth, 3.0).f1 == 0.0


# --- poses --------------------------------------------------------------------------------------


def test_pose_error_zero_for_symmetry_equivalents_and_known_in_plane_angle() -> None:
    g = torch.Generator().manual_seed(3)
    A = random_rotations(20, g, dtype=torch.float64)
    euler = matrix_to_euler(A)
    assert float(scoring.pose_error_deg(euler, euler).max()) < 1e-5
    ops = symmetry_matrices("D2", dtype=torch.float64)
    equivalent = matrix_to_euler(A @ ops[torch.arange(20) % 4])
    assert float(scoring.pose_error_deg(equivalent, euler, "D2").max()) < 1e-5
    assert float(scoring.pose_error_deg(equivalent, euler, "C1")[1:4].min()) > 90.0
    rotated = euler.clone()
    rotated[:, 2] += 12.0  # psi: an in-plane rotation by 12 degrees
    torch.testing.assert_close(
        scoring.pose_error_deg(rotated, euler, "C1"), torch.full((20,), 12.0, dtype=torch.float64)
    )
    c4 = euler.clone()
    c4[:, 0] += 90.0  # rot + 90 = a rotation about the map's z axis: a C4 operator
    assert float(scoring.pose_error_deg(c4, euler, "C4").max()) < 1e-5
    assert float(scoring.pose_error_deg(c4, euler, "C2").min()) == pytest.approx(90.0, abs=1e-4)


def test_shift_error_in_angstrom() -> None:
    est = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    true = torch.zeros(2, 2)
    torch.testing.assert_close(scoring.shift_error_A(est, true), _t(5.0, 0.0))


# --- maps ---------------------------------------------------------------------------------------


def test_map_vs_truth_of_a_band_limited_copy_crosses_at_the_cutoff() -> None:
    n, pixel_size_A, cutoff = 32, 2.0, 8
    truth = torch.randn(n, n, n, generator=torch.Generator().manual_seed(1))
    spectrum = torch.fft.rfftn(truth)
    k = torch.fft.fftfreq(n) * n
    kr = torch.fft.rfftfreq(n) * n
    shell = torch.round(torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr**2))
    # same map up to shell 8, sign-flipped beyond: FSC 1 then -1
    flipped = torch.fft.irfftn(torch.where(shell <= cutoff, spectrum, -spectrum), s=(n, n, n))
    result = scoring.map_vs_truth(flipped, truth, pixel_size_A)
    assert torch.allclose(result.fsc[: cutoff + 1], torch.ones(cutoff + 1), atol=1e-5)
    assert torch.allclose(result.fsc[cutoff + 1 :], -torch.ones(n // 2 - cutoff), atol=1e-5)
    # linear interpolation between shell 8 (FSC 1) and 9 (FSC -1)
    assert result.resolution_fsc05_A == pytest.approx(n * pixel_size_A / (cutoff + 0.25), rel=1e-4)
    assert result.resolution_fsc0143_A == pytest.approx(
        n * pixel_size_A / (cutoff + 0.8570 / 2), rel=1e-4
    )
    same = scoring.map_vs_truth(truth, truth, pixel_size_A)
    assert same.resolution_fsc0143_A == pytest.approx(2 * pixel_size_A)  # Nyquist
    assert math.isclose(float(same.frequencies_invA[-1]), 1 / (2 * pixel_size_A), rel_tol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        scoring.map_vs_truth(truth[:16, :16, :16], truth, pixel_size_A)
