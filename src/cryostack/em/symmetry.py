"""Point-group symmetry operators (RELION orientations) and symmetry-aware pose distances.

Symmetry axes follow RELION (identical to ``relion_refine --print_symmetry_ops``):

- ``C1``, ``Cn``: n-fold axis along z.
- ``Dn``: n-fold along z plus a 2-fold along x.
- ``T``: 3-fold along z and a 2-fold along (0, 0.816496, 0.577350).
- ``O``: 3-fold along (1, 1, 1)/sqrt(3) and 4-fold along z (4-folds on x, y, z).
- ``I`` (= RELION's default ``I2``): 2-fold along z, 5-fold along (0.525731, 0, 0.850651),
  3-fold along (0, 0.356822, 0.934172). ``I1``: 2-fold along x, 5-fold along
  (0.850651, 0, -0.525731). ``I3``: 5-fold along z, 2-fold along (-0.525731, 0, 0.850651).
  ``I4``: 5-fold along (0.894427, 0, 0.447214), 2-fold along (0.525731, 0, 0.850651).

How symmetry acts on poses: a map with symmetry operators ``S`` satisfies ``F(S k) = F(k)``. The
projection of pose ``A`` is the central slice ``F(A^T k)``; since ``(A S)^T k = S^T A^T k`` and the
group contains ``S^T``, the poses ``A S`` (right multiplication) all give the same projection.
:func:`equivalent_poses` and :func:`angular_distance_sym_deg` use this.
"""

from __future__ import annotations

import math
import re

import torch

from cryostack.em.rotations import axis_angle_to_matrix, rotation_angle_rad

_PHI = (1.0 + math.sqrt(5.0)) / 2.0
# (order, axis) generators; axes are exact forms of RELION's printed decimals.
_GENERATORS: dict[str, list[tuple[int, tuple[float, float, float]]]] = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, math.sqrt(2.0 / 3.0), math.sqrt(1.0 / 3.0)))],
    "O": [(3, (1.0, 1.0, 1.0)), (4, (0.0, 0.0, 1.0))],
    "I1": [(2, (1.0, 0.0, 0.0)), (5, (_PHI, 0.0, -1.0))],
    "I2": [(2, (0.0, 0.0, 1.0)), (5, (1.0, 0.0, _PHI))],
    "I3": [(2, (-1.0, 0.0, _PHI)), (5, (0.0, 0.0, 1.0))],
    "I4": [(2, (1.0, 0.0, _PHI)), (5, (2.0, 0.0, 1.0))],
}
_ORDERS = {"T": 12, "O": 24, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def _axis_rotation(order: int, axis: tuple[float, float, float]) -> torch.Tensor:
    """Rotation by 2 pi / order about ``axis`` (normalised), float64 ``(3, 3)``."""
    v = torch.tensor(axis, dtype=torch.float64)
    v = v / torch.linalg.vector_norm(v)
    return axis_angle_to_matrix(v * (2.0 * math.pi / order))


def _close_group(generators: list[torch.Tensor], expected: int) -> torch.Tensor:
    """All products of the generators (group closure), ``(expected, 3, 3)`` float64."""
    group = torch.eye(3, dtype=torch.float64)[None]
    gens = torch.stack(generators)
    while True:
        products = (group[:, None] @ gens[None]).reshape(-1, 3, 3)
        candidates = torch.cat([group, products])
        # Deduplicate by rounding (entries are well separated for finite point groups).
        keys = torch.round(candidates.reshape(-1, 9) * 1e4)
        _, first = _unique_rows(keys)
        new_group = candidates[first]
        if new_group.shape[0] == group.shape[0]:
            break
        group = new_group
    if group.shape[0] != expected:
        raise RuntimeError(f"symmetry closure gave {group.shape[0]} elements, expected {expected}")
    return group


def _unique_rows(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows of ``keys`` and the index of each one's first occurrence (in original order)."""
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    n = keys.shape[0]
    first = torch.full((unique.shape[0],), n, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(n), reduce="amin")
    first = torch.sort(first).values
    return unique, first


def _parse_name(name: str) -> tuple[str, int]:
    text = name.strip().upper()
    match = re.fullmatch(r"([CD])(\d+)", text)
    if match:
        n = int(match.group(2))
        if n < 1:
            raise ValueError(f"symmetry {name!r}: the order must be >= 1")
        return match.group(1), n
    if text in ("T", "O"):
        return text, 0
    if text == "I":
        return "I2", 0
    if text in ("I1", "I2", "I3", "I4"):
        return text, 0
    raise ValueError(
        f"unknown symmetry {name!r}: expected C<n>, D<n>, T, O, I or I1-I4 (RELION point groups)"
    )


def symmetry_matrices(
    name: str, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Rotation operators of a point group in RELION's orientation (see module docstring).

    Args:
        name: ``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I`` (= ``I2``), ``I1``...``I4``
            (case-insensitive).

    Returns:
        ``(n, 3, 3)`` matrices, the identity first; n = N (Cn), 2N (Dn), 12 (T), 24 (O), 60 (I).
    """
    kind, n = _parse_name(name)
    if kind == "C":
        angles = torch.arange(n, dtype=torch.float64) * (2.0 * math.pi / n)
        rotvecs = torch.zeros(n, 3, dtype=torch.float64)
        rotvecs[:, 2] = angles
        group = axis_angle_to_matrix(rotvecs)
    elif kind == "D":
        cyclic = symmetry_matrices(f"C{n}", dtype=torch.float64)
        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
        group = torch.cat([cyclic, cyclic @ flip])
    else:
        gens = [_axis_rotation(order, axis) for order, axis in _GENERATORS[kind]]
        group = _close_group(gens, _ORDERS[kind])
    group = torch.where(group.abs() < 1e-12, torch.zeros_like(group), group)
    return group.to(device=device, dtype=dtype)


def equivalent_poses(A: torch.Tensor, symmetry: str) -> torch.Tensor:
    """All poses equivalent to ``A`` under the map's symmetry, ``A S`` for each operator ``S``.

    Args:
        A: ``(..., 3, 3)`` RELION matrices.
        symmetry: point-group name.

    Returns:
        ``(..., n, 3, 3)``.
    """
    ops = symmetry_matrices(symmetry, device=A.device, dtype=A.dtype)
    return A[..., None, :, :] @ ops


def angular_distance_sym_deg(A: torch.Tensor, B: torch.Tensor, symmetry: str) -> torch.Tensor:
    """Smallest rotation angle in degrees between poses ``A`` and ``B`` modulo the map's symmetry.

    ``min_S angle(A S B^T)``, for scoring estimated poses against the truth.

    Args:
        A, B: ``(..., 3, 3)`` RELION matrices (broadcast).
        symmetry: point-group name.

    Returns:
        ``(...)`` angles in [0, 180].
    """
    out_dtype = torch.promote_types(A.dtype, B.dtype)
    ops = symmetry_matrices(symmetry, device=A.device, dtype=torch.float64)
    a = A.to(torch.float64)[..., None, :, :] @ ops
    rel = a @ B.to(torch.float64)[..., None, :, :].transpose(-1, -2)
    return (rotation_angle_rad(rel).amin(-1) * (180.0 / math.pi)).to(out_dtype)


_REFERENCE_DIRECTION = (0.1234, 0.0567, 0.9876)


def asymmetric_unit_mask(directions: torch.Tensor, symmetry: str) -> torch.Tensor:
    """Which viewing directions lie in an asymmetric unit of the sphere.

    Pose ``A`` and ``A S`` are equivalent, and the viewing direction of ``A S`` is ``S^T d``. The
    asymmetric unit used here is the Dirichlet cell of a fixed generic reference direction ``v``:
    ``d`` is kept when ``d . v >= d . (S v)`` for every operator ``S`` (ties kept, so boundary
    directions may appear in two cells). Combined with the full psi circle this covers every pose
    once up to symmetry. Its shape differs from RELION's asymmetric-unit definitions.

    Args:
        directions: ``(..., 3)`` unit vectors (x, y, z).
        symmetry: point-group name.

    Returns:
        ``(...)`` boolean mask.
    """
    ops = symmetry_matrices(symmetry, device=directions.device, dtype=torch.float64)
    v = torch.tensor(_REFERENCE_DIRECTION, dtype=torch.float64, device=directions.device)
    v = v / torch.linalg.vector_norm(v)
    images = ops @ v  # (n, 3)
    scores = directions.to(torch.float64) @ images.T  # (..., n)
    return scores[..., 0] >= scores.amax(-1) - 1e-9
