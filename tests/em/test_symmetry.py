"""Tests for cryostack.em.symmetry: RELION point groups and symmetry-aware pose distances."""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import torch

from cryostack.em import rotations, symmetry
from helpers import require_program

GROUPS = {"C1": 1, "C4": 4, "C7": 7, "D2": 4, "D5": 10, "T": 12, "O": 24, "I": 60, "I1": 60}


def _contains(group: torch.Tensor, m: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """For each matrix in ``m`` (k, 3, 3): is it in ``group`` (n, 3, 3)?"""
    diff = (group[None] - m[:, None]).abs().amax(dim=(-1, -2))
    return diff.amin(-1) < atol


@pytest.mark.parametrize(("name", "order"), GROUPS.items())
def test_group_properties(name: str, order: int) -> None:
    g = symmetry.symmetry_matrices(name, dtype=torch.float64)
    assert g.shape == (order, 3, 3)
    torch.testing.assert_close(g[0], torch.eye(3, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand_as(g)
    torch.testing.assert_close(g @ g.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(g), torch.ones(order, dtype=torch.float64))
    # closure under products and inverses, and all elements distinct
    products = (g[:, None] @ g[None]).reshape(-1, 3, 3)
    assert _contains(g, products).all()
    assert _contains(g, g.transpose(-1, -2)).all()
    distinct = (g[:, None] - g[None]).abs().amax(dim=(-1, -2)) + torch.eye(order) * 10
    assert distinct.min() > 0.1


def test_group_axes_follow_relion() -> None:
    # Cn: n-fold about z; Dn: 2-fold about x; O: 4-folds on x, y, z; I (= I2): 2-fold on z.
    c4 = symmetry.symmetry_matrices("C4", dtype=torch.float64)
    assert _contains(c4, rotations.axis_angle_to_matrix(torch.tensor([[0, 0, math.pi / 2]]))).all()
    d3 = symmetry.symmetry_matrices("D3", dtype=torch.float64)
    assert _contains(d3, torch.diag(torch.tensor([1.0, -1, -1], dtype=torch.float64))[None]).all()
    o = symmetry.symmetry_matrices("O", dtype=torch.float64)
    quarter = torch.eye(3, dtype=torch.float64) * (math.pi / 2)
    assert _contains(o, rotations.axis_angle_to_matrix(quarter)).all()
    ico = symmetry.symmetry_matrices("I", dtype=torch.float64)
    half_turns = torch.eye(3, dtype=torch.float64) * math.pi
    assert _contains(ico, rotations.axis_angle_to_matrix(half_turns)).all()
    phi = (1 + math.sqrt(5)) / 2
    five = torch.tensor([1.0, 0.0, phi], dtype=torch.float64)
    five = five / five.norm() * (2 * math.pi / 5)
    assert _contains(ico, rotations.axis_angle_to_matrix(five[None])).all()
    # I1 differs from I2 by 90 degrees about z
    i1 = symmetry.symmetry_matrices("I1", dtype=torch.float64)
    rz = rotations.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert _contains(i1, rz @ ico @ rz.T).all()
    assert not _contains(i1, ico).all()
    with pytest.raises(ValueError, match="unknown symmetry 'X3'"):
        symmetry.symmetry_matrices("X3")


def _relion_symmetry_ops(name: str) -> torch.Tensor:
    program = require_program("relion_refine")
    out = subprocess.run(
        [program, "--print_symmetry_ops", "--sym", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    blocks = re.findall(r"R\(\d+\)=\s*\n((?:\s*[-\d.e+]+\s+[-\d.e+]+\s+[-\d.e+]+\s*\n){3})", out)
    values = [[float(x) for x in block.split()] for block in blocks]
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 3, 3)


@pytest.mark.relion
@pytest.mark.parametrize("name", ["C3", "D4", "T", "O", "I", "I1", "I3", "I4"])
def test_groups_match_relion_print_symmetry_ops(name: str) -> None:
    relion = _relion_symmetry_ops(name)
    ours = symmetry.symmetry_matrices(name, dtype=torch.float64)
    assert relion.shape == ours.shape
    assert _contains(ours, relion, atol=2e-4).all()


def _symmetric_function(points: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """f(x) = sum_S g(S x) for an asymmetric sum of Gaussians g; points (..., 3)."""
    centres = torch.tensor([[0.3, -0.1, 0.2], [-0.25, 0.2, 0.05], [0.1, 0.35, -0.3]]).double()
    widths = torch.tensor([0.15, 0.1, 0.2]).double()
    moved = torch.einsum("sij,...j->...si", ops, points)  # (..., n_ops, 3)
    d2 = ((moved[..., None, :] - centres) ** 2).sum(-1)  # (..., n_ops, n_blobs)
    return torch.exp(-d2 / (2 * widths**2)).sum((-1, -2))


@pytest.mark.parametrize("name", ["C5", "D3", "O"])
def test_pose_times_operator_gives_same_central_slice(name: str) -> None:
    ops = symmetry.symmetry_matrices(name, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    a = rotations.random_rotations(1, generator=gen, dtype=torch.float64)[0]
    # central-slice points k = (kx, ky, 0) rotated into the map frame by A^T
    g = torch.linspace(-0.5, 0.5, 9, dtype=torch.float64)
    ky, kx = torch.meshgrid(g, g, indexing="ij")
    k = torch.stack([kx, ky, torch.zeros_like(kx)], -1).reshape(-1, 3)
    reference = _symmetric_function(k @ a, ops)  # rows of k @ A = A^T k
    for pose in symmetry.equivalent_poses(a, name):
        torch.testing.assert_close(_symmetric_function(k @ pose, ops), reference)
    # left multiplication S A is not a symmetry of the projection (for a non-trivial S)
    other = _symmetric_function(k @ (ops[1] @ a), ops)
    assert (other - reference).abs().max() > 1e-3


def test_angular_distance_sym_deg() -> None:
    gen = torch.Generator().manual_seed(6)
    a = rotations.random_rotations(50, generator=gen, dtype=torch.float64)
    ops = symmetry.symmetry_matrices("D7", dtype=torch.float64)
    b = a @ ops[torch.randint(0, 14, (50,), generator=gen)]
    assert symmetry.angular_distance_sym_deg(a, b, "D7").max() < 1e-5
    assert rotations.angular_distance_deg(a, b).max() > 20
    # a small extra rotation survives the symmetry reduction
    tweak = rotations.axis_angle_to_matrix(torch.tensor([0.0, 0.02, 0.0], dtype=torch.float64))
    d = symmetry.angular_distance_sym_deg(a, b @ tweak, "D7")
    torch.testing.assert_close(d, torch.full((50,), math.degrees(0.02), dtype=torch.float64))
    # never larger than the plain distance
    c = rotations.random_rotations(50, generator=gen, dtype=torch.float64)
    assert (
        symmetry.angular_distance_sym_deg(a, c, "O") <= rotations.angular_distance_deg(a, c) + 1e-9
    ).all()


@pytest.mark.parametrize(("name", "order"), [("C4", 4), ("D3", 6), ("O", 24), ("I", 60)])
def test_asymmetric_unit_covers_sphere_once(name: str, order: int) -> None:
    gen = torch.Generator().manual_seed(7)
    d = torch.randn(40000, 3, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    inside = symmetry.asymmetric_unit_mask(d, name)
    assert abs(inside.double().mean().item() - 1 / order) < 4 * math.sqrt(1 / order / 40000) + 1e-3
    # each direction has exactly one symmetry image S^T d inside the unit
    ops = symmetry.symmetry_matrices(name, dtype=torch.float64)
    images = torch.einsum("sji,nj->nsi", ops, d[:500])
    counts = symmetry.asymmetric_unit_mask(images, name).sum(-1)
    assert (counts == 1).all()
