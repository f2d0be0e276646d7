"""Tests for cryostack.em.rotations: RELION Euler angles, axis-angle, quaternions, cryoSPARC."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryostack.em import rotations

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


def _rz_passive(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _ry_passive(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]], dtype=torch.float64)


def test_euler_to_matrix_is_zyz_passive_product() -> None:
    angles = [(10.0, 20.0, 30.0), (-150.0, 120.0, 75.0), (0.0, 90.0, 0.0), (33.0, 177.0, -12.0)]
    got = rotations.euler_to_matrix(torch.tensor(angles, dtype=torch.float64))
    for k, (rot, tilt, psi) in enumerate(angles):
        expected = _rz_passive(psi) @ _ry_passive(tilt) @ _rz_passive(rot)
        torch.testing.assert_close(got[k], expected, atol=1e-12, rtol=0)


def test_euler_to_matrix_known_rows_and_viewing_direction() -> None:
    # rot = 90 alone: passive rotation about z: x_image = y_map.
    a = rotations.euler_to_matrix(torch.tensor([90.0, 0.0, 0.0]))
    torch.testing.assert_close(
        a, torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-6, rtol=0
    )
    # The viewing direction (row 2) for rot=30, tilt=60 is (sin60 cos30, sin60 sin30, cos60).
    a = rotations.euler_to_matrix(torch.tensor([30.0, 60.0, 45.0], dtype=torch.float64))
    s60, c60 = math.sin(math.radians(60)), 0.5
    expected = torch.tensor([s60 * math.cos(math.radians(30)), s60 * 0.5, c60], dtype=torch.float64)
    torch.testing.assert_close(rotations.viewing_direction(a), expected, atol=1e-12, rtol=0)
    assert a.dtype == torch.float64


def test_euler_batch_shape_dtype_and_orthonormal() -> None:
    gen = torch.Generator().manual_seed(0)
    angles = torch.rand(4, 5, 3, generator=gen) * torch.tensor(
        [360.0, 180.0, 360.0]
    ) - torch.tensor([180.0, 0.0, 180.0])
    a = rotations.euler_to_matrix(angles)
    assert a.shape == (4, 5, 3, 3) and a.dtype == torch.float32
    eye = torch.eye(3).expand(4, 5, 3, 3)
    torch.testing.assert_close(a @ a.transpose(-1, -2), eye, atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(a), torch.ones(4, 5), atol=1e-6)


def test_matrix_to_euler_round_trip_regular() -> None:
    gen = torch.Generator().manual_seed(1)
    n = 2000
    rot = torch.rand(n, generator=gen, dtype=torch.float64) * 360 - 180
    tilt = torch.rand(n, generator=gen, dtype=torch.float64) * 178 + 1
    psi = torch.rand(n, generator=gen, dtype=torch.float64) * 360 - 180
    angles = torch.stack([rot, tilt, psi], -1)
    back = rotations.matrix_to_euler(rotations.euler_to_matrix(angles))
    diff = torch.remainder(back - angles + 180, 360) - 180
    assert diff.abs().max() < 1e-8
    # float32 path: matrices back to the same matrix within float32 precision
    a32 = rotations.euler_to_matrix(angles.float())
    err = rotations.angular_distance_deg(
        rotations.euler_to_matrix(rotations.matrix_to_euler(a32)), a32
    )
    assert err.max() < 0.01


@pytest.mark.parametrize("tilt", [0.0, 180.0, 1e-6, 179.99999])
def test_matrix_to_euler_gimbal_lock(tilt: float) -> None:
    angles = torch.tensor([[40.0, tilt, 25.0], [-170.0, tilt, 100.0]], dtype=torch.float64)
    a = rotations.euler_to_matrix(angles)
    back = rotations.matrix_to_euler(a)
    assert torch.isfinite(back).all()
    assert rotations.angular_distance_deg(rotations.euler_to_matrix(back), a).max() < 1e-4
    assert (back[:, 0] == 0).all() or tilt not in (0.0, 180.0)
    # float32 matrices at gimbal lock too
    back32 = rotations.matrix_to_euler(a.float())
    assert rotations.angular_distance_deg(rotations.euler_to_matrix(back32), a.float()).max() < 0.01


def test_axis_angle_rodrigues_known_rotation() -> None:
    # +90 degrees about z maps x to y (active rotation).
    m = rotations.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    torch.testing.assert_close(m @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(rotations.axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))


def test_axis_angle_round_trip_including_small_and_near_pi() -> None:
    gen = torch.Generator().manual_seed(2)
    axes = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    axes = axes / axes.norm(dim=-1, keepdim=True)
    angles = torch.rand(500, generator=gen, dtype=torch.float64) * math.pi
    angles[:5] = torch.tensor([0.0, 1e-9, 1e-5, math.pi - 1e-7, math.pi - 1e-3])
    v = axes * angles[:, None]
    back = rotations.matrix_to_axis_angle(rotations.axis_angle_to_matrix(v))
    # compare as rotations (axis sign is ambiguous at exactly pi)
    err = rotations.angular_distance_deg(
        rotations.axis_angle_to_matrix(back), rotations.axis_angle_to_matrix(v)
    )
    assert err.max() < 1e-6
    torch.testing.assert_close(back[:-2], v[:-2], atol=1e-7, rtol=0)


def test_quaternions_compose_like_matrices() -> None:
    gen = torch.Generator().manual_seed(3)
    q1 = rotations.random_quaternions(100, generator=gen, dtype=torch.float64)
    q2 = rotations.random_quaternions(100, generator=gen, dtype=torch.float64)
    m1, m2 = rotations.quaternion_to_matrix(q1), rotations.quaternion_to_matrix(q2)
    torch.testing.assert_close(
        rotations.quaternion_to_matrix(rotations.quaternion_multiply(q1, q2)), m1 @ m2
    )
    torch.testing.assert_close(rotations.matrix_to_quaternion(m1), q1)


def test_random_rotations_are_uniform() -> None:
    gen = torch.Generator().manual_seed(4)
    n = 20000
    m = rotations.random_rotations(n, generator=gen, dtype=torch.float64)
    assert m.shape == (n, 3, 3)
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(n, dtype=torch.float64))
    # Haar measure: E[R] = 0, rotation angle density (1 - cos t)/pi, so E[cos t] = -1/2,
    # viewing directions uniform on the sphere: z uniform in [-1, 1].
    assert m.mean(0).abs().max() < 0.03
    t = rotations.rotation_angle_rad(m)
    assert abs(torch.cos(t).mean().item() + 0.5) < 0.02
    z = rotations.viewing_direction(m)[:, 2]
    counts = torch.histc(z, bins=10, min=-1, max=1)
    expected = n / 10
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 27.9  # chi-square, 9 dof, p = 0.001


def test_angular_distance_deg() -> None:
    a = rotations.euler_to_matrix(torch.tensor([10.0, 50.0, 20.0], dtype=torch.float64))
    b = a @ rotations.axis_angle_to_matrix(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
    expected = math.degrees(math.sqrt(0.3**2 + 0.2**2 + 0.5**2))
    assert abs(rotations.angular_distance_deg(a, b).item() - expected) < 1e-9
    assert rotations.angular_distance_deg(a, a).item() < 1e-6
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    assert abs(rotations.angular_distance_deg(a, flip @ a).item() - 180.0) < 1e-9


def test_cryosparc_pose_about_z_is_relion_in_plane_angle() -> None:
    # A cryoSPARC pose of +theta about z gives A = R_z(theta)^T = RELION psi + rot = +theta.
    a = rotations.cryosparc_pose_to_matrix(
        torch.tensor([0.0, 0.0, math.radians(30.0)], dtype=torch.float64)
    )
    torch.testing.assert_close(a, _rz_passive(30.0))
    # A pose of +theta about y is RELION (rot, tilt, psi) = (0, theta, 0).
    a = rotations.cryosparc_pose_to_matrix(
        torch.tensor([0.0, math.radians(40.0), 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(a, _ry_passive(40.0), atol=1e-12, rtol=0)
    eul = rotations.matrix_to_euler(a)
    torch.testing.assert_close(eul, torch.tensor([0.0, 40.0, 0.0], dtype=torch.float64))


def test_cryosparc_real_poses_round_trip_through_relion_angles() -> None:
    path = FIXTURES / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs"
    if not path.exists():
        pytest.skip(f"fixture {path} not present")
    poses = torch.from_numpy(np.load(path)["alignments3D/pose"].astype(np.float64))
    a = rotations.cryosparc_pose_to_matrix(poses)
    eul = rotations.matrix_to_euler(a)
    assert eul[:, 1].min() >= 0 and eul[:, 1].max() <= 180
    back = rotations.matrix_to_cryosparc_pose(rotations.euler_to_matrix(eul))
    err = rotations.angular_distance_deg(
        rotations.axis_angle_to_matrix(back), rotations.axis_angle_to_matrix(poses)
    )
    assert err.max() < 0.5
    # The relation is a transpose, not the identity: reading the pose as A directly differs.
    wrong = rotations.angular_distance_deg(rotations.axis_angle_to_matrix(poses), a)
    assert wrong.median() > 10.0
