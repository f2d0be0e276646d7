"""Rotations: RELION Euler angles, matrices, quaternions, axis-angle and cryoSPARC poses.

Conventions (binding for all of :mod:`cryostack`):

- RELION Euler angles ``[rot, tilt, psi]`` in degrees are Z-Y-Z angles. The matrix
  ``A = R_z(psi) R_y(tilt) R_z(rot)`` (passive rotations) maps the map's frame to the image's frame:
  a projection image is the central slice ``F3D(A^T (kx, ky, 0))`` of the map's Fourier transform.
  Row 2 of ``A`` (``A^T e_z``) is the viewing direction in the map's frame:
  ``(sin(tilt) cos(rot), sin(tilt) sin(rot), cos(tilt))``.
- Axis-angle vectors ``(..., 3)`` are in radians; :func:`axis_angle_to_matrix` is the standard
  (active, right-handed) Rodrigues formula ``R = I + sin(t) K + (1 - cos(t)) K^2``.
- Quaternions are ``(..., 4)`` = ``(w, x, y, z)``, scalar first, unit norm; ``w >= 0`` on output.
  :func:`quaternion_to_matrix` gives the active rotation matrix of the quaternion and
  :func:`quaternion_multiply` composes like matrices: ``M(q1 * q2) = M(q1) @ M(q2)``.
- cryoSPARC ``alignments3D/pose`` is an axis-angle vector whose Rodrigues matrix is the
  *transpose* of RELION's ``A``: ``A = R(pose)^T``. This is the relation used by both established
  converters (pyem ``csparc2star``: Euler angles = ``rot2euler(rodrigues(pose)^T)``; cryoDRGN
  ``parse_pose_csparc`` stores ``rodrigues(pose)^T`` and ``parse_pose_star`` stores exactly ``A``
  for the same quantity). pyem's ``expmap`` (Rodrigues, transposed) was contributed from
  cryoSPARC's own code by its author (github.com/asarnow/pyem/pull/5) and the resulting RELION
  angles were confirmed correct there. No fixture pairs cryoSPARC poses with RELION angles
  for the same particles (``empiar_10076_7.cs``/``.star`` carry CTF only), so the tests check
  the relation on hand-worked poses and on the real poses of
  ``cryosparc_P12_J24_001_particles.cs``. See
  :func:`cryosparc_pose_to_matrix`.

All functions are batched over leading dimensions, keep the input's device, and compute in float64
internally where precision matters, returning the input's floating dtype.
"""

from __future__ import annotations

import math

import torch

_DEG = math.pi / 180.0


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    """The floating dtype results should have for input ``x`` (float32 unless already floating)."""
    return x.dtype if x.is_floating_point() else torch.float32


def euler_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles to rotation matrices.

    Args:
        angles_deg: ``(..., 3)`` ``[rot, tilt, psi]`` in degrees (RELION Z-Y-Z).

    Returns:
        ``(..., 3, 3)`` matrices ``A = R_z(psi) R_y(tilt) R_z(rot)`` (map frame to image frame).
    """
    if angles_deg.shape[-1] != 3:
        raise ValueError(f"euler_to_matrix expects (..., 3) angles, got {tuple(angles_deg.shape)}")
    out_dtype = _float_dtype(angles_deg)
    rad = angles_deg.to(torch.float64) * _DEG
    cr, ct, cp = torch.cos(rad).unbind(-1)
    sr, st, sp = torch.sin(rad).unbind(-1)
    rows = [
        cp * ct * cr - sp * sr,
        cp * ct * sr + sp * cr,
        -cp * st,
        -sp * ct * cr - cp * sr,
        -sp * ct * sr + cp * cr,
        sp * st,
        st * cr,
        st * sr,
        ct,
    ]
    return torch.stack(rows, dim=-1).reshape(*angles_deg.shape[:-1], 3, 3).to(out_dtype)


def matrix_to_euler(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to RELION Euler angles (inverse of :func:`euler_to_matrix`).

    Args:
        matrices: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` ``[rot, tilt, psi]`` in degrees with rot, psi in (-180, 180] and tilt in
        [0, 180]. At gimbal lock (tilt within ~sqrt(machine epsilon) of 0 or 180 degrees) only
        rot + psi (tilt 0) or psi - rot (tilt 180) is defined; then rot = 0 and psi carries the
        in-plane angle.
    """
    if matrices.shape[-2:] != (3, 3):
        raise ValueError(
            f"matrix_to_euler expects (..., 3, 3) matrices, got {tuple(matrices.shape)}"
        )
    out_dtype = _float_dtype(matrices)
    threshold = 4.0 * math.sqrt(torch.finfo(out_dtype).eps)
    m = matrices.to(torch.float64)
    sin_tilt = torch.sqrt(m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2)
    tilt = torch.atan2(sin_tilt, m[..., 2, 2])
    regular = sin_tilt > threshold
    rot = torch.where(regular, torch.atan2(m[..., 2, 1], m[..., 2, 0]), torch.zeros_like(tilt))
    psi_regular = torch.atan2(m[..., 1, 2], -m[..., 0, 2])
    # Gimbal lock: A = R_z(psi + rot) (tilt 0) or R_z(psi - rot) R_y(180) (tilt 180); take rot = 0.
    psi_up = torch.atan2(m[..., 0, 1], m[..., 0, 0])
    psi_down = torch.atan2(m[..., 0, 1], -m[..., 0, 0])
    psi = torch.where(regular, psi_regular, torch.where(m[..., 2, 2] > 0, psi_up, psi_down))
    return (torch.stack([rot, tilt, psi], dim=-1) / _DEG).to(out_dtype)


def _skew(v: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` vectors to ``(..., 3, 3)`` cross-product matrices ``[v]_x``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle (rotation) vectors to rotation matrices (Rodrigues).

    Args:
        rotvec: ``(..., 3)`` axis times angle, in radians.

    Returns:
        ``(..., 3, 3)`` active rotation matrices ``R = I + sin(t) K + (1 - cos(t)) K^2`` with
        ``K = [axis]_x``, ``t = |rotvec|``.
    """
    if rotvec.shape[-1] != 3:
        raise ValueError(
            f"axis_angle_to_matrix expects (..., 3) vectors, got {tuple(rotvec.shape)}"
        )
    out_dtype = _float_dtype(rotvec)
    v = rotvec.to(torch.float64)
    theta2 = (v * v).sum(-1)
    theta = torch.sqrt(theta2)
    small = theta < 1e-4
    safe = torch.where(small, torch.ones_like(theta), theta)
    # sin(t)/t and (1 - cos t)/t^2 with Taylor series near 0.
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe)) / (safe * safe))
    k = _skew(v)
    eye = torch.eye(3, dtype=torch.float64, device=v.device).expand(k.shape)
    r = eye + a[..., None, None] * k + b[..., None, None] * (k @ k)
    return r.to(out_dtype)


def matrix_to_quaternion(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to unit quaternions.

    Args:
        matrices: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 4)`` quaternions ``(w, x, y, z)`` with ``w >= 0``.
    """
    if matrices.shape[-2:] != (3, 3):
        raise ValueError(
            f"matrix_to_quaternion expects (..., 3, 3) matrices, got {tuple(matrices.shape)}"
        )
    out_dtype = _float_dtype(matrices)
    m = matrices.to(torch.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Candidate k is proportional to q * q_k; choose the one with the largest |q_k| for stability.
    candidates = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        dim=-2,
    )
    diag = torch.diagonal(candidates, dim1=-2, dim2=-1)
    best = diag.argmax(-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(candidates, -2, index).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q.to(out_dtype)


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(..., 4)`` ``(w, x, y, z)`` (normalised here) to ``(..., 3, 3)`` matrices."""
    if quaternions.shape[-1] != 4:
        raise ValueError(
            f"quaternion_to_matrix expects (..., 4) quaternions, got {tuple(quaternions.shape)}"
        )
    out_dtype = _float_dtype(quaternions)
    q = quaternions.to(torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    entries = [
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    ]
    return torch.stack(entries, -1).reshape(*q.shape[:-1], 3, 3).to(out_dtype)


def quaternion_multiply(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``q1 * q2`` of ``(..., 4)`` quaternions (broadcast), ``w`` first.

    Composes like matrices: ``quaternion_to_matrix(q1 * q2) == M(q1) @ M(q2)``.
    """
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        dim=-1,
    )


def quaternion_to_axis_angle(quaternions: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(..., 4)`` to axis-angle vectors ``(..., 3)`` in radians, angle in [0, pi]."""
    out_dtype = _float_dtype(quaternions)
    q = quaternions.to(torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., 0], q[..., 1:]
    n = torch.linalg.vector_norm(v, dim=-1)
    theta = 2.0 * torch.atan2(n, w)
    small = n < 1e-8
    factor = torch.where(small, 2.0 / w.clamp_min(1e-12), theta / torch.where(small, 1.0, n))
    return (v * factor[..., None]).to(out_dtype)


def matrix_to_axis_angle(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` to axis-angle vectors ``(..., 3)`` (radians, angle <= pi).

    Inverse of :func:`axis_angle_to_matrix`.
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(matrices))


def cryosparc_pose_to_matrix(pose_rad: torch.Tensor) -> torch.Tensor:
    """cryoSPARC ``alignments3D/pose`` to RELION's matrix ``A`` (see module docstring).

    Args:
        pose_rad: ``(..., 3)`` cryoSPARC axis-angle pose in radians.

    Returns:
        ``(..., 3, 3)`` ``A = rodrigues(pose)^T``; ``matrix_to_euler(A)`` gives RELION's
        ``[rot, tilt, psi]``.
    """
    return axis_angle_to_matrix(pose_rad).transpose(-1, -2)


def matrix_to_cryosparc_pose(matrices: torch.Tensor) -> torch.Tensor:
    """RELION's ``A`` ``(..., 3, 3)`` to cryoSPARC ``alignments3D/pose`` ``(..., 3)`` in radians."""
    return matrix_to_axis_angle(matrices.transpose(-1, -2))


def viewing_direction(matrices: torch.Tensor) -> torch.Tensor:
    """Unit viewing (projection) direction in the map's frame, ``A^T e_z`` = row 2 of ``A``.

    Args:
        matrices: ``(..., 3, 3)`` RELION matrices ``A``.

    Returns:
        ``(..., 3)`` (x, y, z) unit vectors.
    """
    return matrices[..., 2, :]


def random_quaternions(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(n, 4)`` quaternions uniform on SO(3) (normalised 4D Gaussians), ``w >= 0``."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=device)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q.to(dtype)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(n, 3, 3)`` rotation matrices drawn uniformly (Haar measure) from SO(3).

    ``generator`` must live on ``device`` when both are given.
    """
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=device)
    return quaternion_to_matrix(q).to(dtype)


def rotation_angle_rad(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation angle in radians, in [0, pi], of ``(..., 3, 3)`` matrices (robust near 0 and pi)."""
    m = matrices.to(torch.float64)
    cos_t = (m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2] - 1.0) / 2.0
    axis = torch.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1
    )
    sin_t = torch.linalg.vector_norm(axis, dim=-1) / 2.0
    return torch.atan2(sin_t, cos_t).to(_float_dtype(matrices))


def angular_distance_deg(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees between rotations ``A`` and ``B`` (``(..., 3, 3)``, broadcast).

    It is the rotation angle of ``A B^T`` in [0, 180].
    """
    rel = A.to(torch.float64) @ B.to(torch.float64).transpose(-1, -2)
    out_dtype = torch.promote_types(_float_dtype(A), _float_dtype(B))
    return (rotation_angle_rad(rel) / _DEG).to(out_dtype)
