"""Scores of estimates against a known answer (simulated ground truth): pure tensor functions.

Units and conventions (``em-conventions.md``):

- Defocus in Å, positive = underfocus; astigmatism angle in degrees from the x axis. A CTF is
  unchanged by swapping U and V and adding 90° to the angle, and the angle is defined modulo 180°,
  so defocus pairs are first normalised to ``U >= V`` (:func:`normalise_defocus`).
- Drift trajectories are ``(..., T, 2)`` (x, y) displacements in pixels. Motion-correction
  programs report them relative to different reference frames (first, middle, or the mean), so
  :func:`drift_rmse_px` removes the constant offset that best aligns the two trajectories (their
  mean difference) before taking the RMS of the remaining per-frame distance.
- Picks are ``(n, 2)`` (x, y) micrograph pixels. :func:`match_points` pairs picks and true centres
  one to one, greedily by increasing distance, within a radius.
- Poses are RELION Euler angles (rot, tilt, psi) in degrees; pose errors are geodesic angles
  modulo the map's point-group symmetry (:func:`cryostack.em.symmetry.angular_distance_sym_deg`);
  shift errors are distances between RELION origins (rlnOriginXAngst/YAngst) in Å.
- Maps are scored by the FSC against the true map (:mod:`cryostack.em.fsc`) and the resolution
  where it falls below 0.5 and 0.143.

Functions are batched over leading dimensions where that makes sense and run on the inputs'
device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryostack.em.fsc import fsc, resolution_at_threshold, shell_frequencies
from cryostack.em.rotations import euler_to_matrix
from cryostack.em.symmetry import angular_distance_sym_deg

# --------------------------------------------------------------------------------------------
# CTF


def normalise_defocus(
    defocus_u_A: torch.Tensor, defocus_v_A: torch.Tensor, defocus_angle_deg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same CTF with ``U >= V`` and the angle in [0, 180) degrees.

    Args:
        defocus_u_A, defocus_v_A: ``(...)`` defoci in Å.
        defocus_angle_deg: ``(...)`` astigmatism angle from x in degrees.

    Returns:
        ``(u, v, angle)``: where ``U < V`` the two are swapped and 90° is added to the angle.
    """
    swap = defocus_u_A < defocus_v_A
    u = torch.where(swap, defocus_v_A, defocus_u_A)
    v = torch.where(swap, defocus_u_A, defocus_v_A)
    angle = torch.remainder(torch.where(swap, defocus_angle_deg + 90.0, defocus_angle_deg), 180.0)
    return u, v, angle


def angle_difference_mod180_deg(a_deg: torch.Tensor, b_deg: torch.Tensor) -> torch.Tensor:
    """Smallest absolute difference of two axis directions (defined modulo 180°), in [0, 90]."""
    d = torch.remainder(a_deg - b_deg, 180.0)
    return torch.minimum(d, 180.0 - d)


@dataclass
class DefocusErrors:
    """Per-item CTF errors (all ``(...)`` tensors).

    Attributes:
        mean_defocus_error_A: estimated minus true mean defocus ``(U + V) / 2``, Å (signed).
        mean_defocus_error_percent: the same as a percentage of the true mean defocus.
        astigmatism_error_A: estimated minus true astigmatism ``U - V``, Å (signed).
        angle_error_deg: astigmatism-angle error modulo 180°, in [0, 90] degrees.
    """

    mean_defocus_error_A: torch.Tensor
    mean_defocus_error_percent: torch.Tensor
    astigmatism_error_A: torch.Tensor
    angle_error_deg: torch.Tensor


def defocus_errors(
    estimated_u_A: torch.Tensor,
    estimated_v_A: torch.Tensor,
    estimated_angle_deg: torch.Tensor,
    true_u_A: torch.Tensor,
    true_v_A: torch.Tensor,
    true_angle_deg: torch.Tensor,
) -> DefocusErrors:
    """Errors of estimated CTF defocus against the truth, after normalising both to ``U >= V``.

    All arguments are ``(...)`` tensors (broadcast): defoci in Å, angles in degrees from x.
    The angle error means little when the true astigmatism is small (a few tens of Å): callers
    should only average it where ``true_u_A - true_v_A`` is large enough.
    """
    eu, ev, ea = normalise_defocus(estimated_u_A, estimated_v_A, estimated_angle_deg)
    tu, tv, ta = normalise_defocus(true_u_A, true_v_A, true_angle_deg)
    true_mean = (tu + tv) / 2.0
    error = (eu + ev) / 2.0 - true_mean
    return DefocusErrors(
        mean_defocus_error_A=error,
        mean_defocus_error_percent=100.0 * error / true_mean,
        astigmatism_error_A=(eu - ev) - (tu - tv),
        angle_error_deg=angle_difference_mod180_deg(ea, ta),
    )


# --------------------------------------------------------------------------------------------
# motion


def drift_rmse_px(estimated_px: torch.Tensor, true_px: torch.Tensor) -> torch.Tensor:
    """RMS distance between two drift trajectories after removing a constant offset.

    The offset is the mean over frames of ``estimated - true`` (the least-squares constant), so a
    trajectory reported relative to another reference frame scores 0.

    Args:
        estimated_px, true_px: ``(..., T, 2)`` (x, y) displacements in pixels, same sign
            convention (where the content of frame t moved relative to the reference).

    Returns:
        ``(...)`` RMSE in pixels: ``sqrt(mean_t |e_t - t_t - offset|^2)``.
    """
    if estimated_px.shape != true_px.shape or estimated_px.shape[-1] != 2:
        raise ValueError(
            f"trajectories must both be (..., T, 2), got {tuple(estimated_px.shape)} "
            f"and {tuple(true_px.shape)}"
        )
    diff = estimated_px.to(torch.float64) - true_px.to(torch.float64)
    diff = diff - diff.mean(dim=-2, keepdim=True)
    return torch.sqrt((diff**2).sum(dim=-1).mean(dim=-1))


# --------------------------------------------------------------------------------------------
# picking


def match_points(
    predicted_px: torch.Tensor, true_px: torch.Tensor, radius_px: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one matching of predicted and true points within a radius, greedy by distance.

    All pairs closer than or at ``radius_px`` are taken in order of increasing distance (ties in
    index order); a pair is accepted when neither point is matched yet. This is optimal when the
    points are sparser than the radius (picks further apart than two radii), and close to the
    optimal assignment otherwise.

    Args:
        predicted_px: ``(P, 2)`` (x, y) points.
        true_px: ``(Q, 2)`` (x, y) points.
        radius_px: maximum matching distance (same unit as the points).

    Returns:
        ``(predicted_index, true_index)``: two ``(M,)`` int64 tensors of matched pairs, in order
        of increasing distance.
    """
    device = predicted_px.device
    if predicted_px.shape[0] == 0 or true_px.shape[0] == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    distance = torch.cdist(
        predicted_px.to(torch.float64), true_px.to(device=device, dtype=torch.float64)
    )
    p_idx, t_idx = torch.nonzero(distance <= radius_px, as_tuple=True)
    order = torch.argsort(distance[p_idx, t_idx], stable=True)
    used_p: set[int] = set()
    used_t: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for p, t in zip(p_idx[order].tolist(), t_idx[order].tolist(), strict=True):
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
            pairs.append((p, t))
    matched = torch.tensor(pairs, dtype=torch.long, device=device).reshape(-1, 2)
    return matched[:, 0], matched[:, 1]


@dataclass
class PickingScores:
    """Counts and rates of a picking result.

    ``precision = tp / n_predicted`` and ``recall = tp / n_true``; each is 1 when its denominator
    is 0 (nothing predicted: no false pick; nothing to find: nothing missed), and F1 is their
    harmonic mean (0 when both are 0).
    """

    n_true_positive: int
    n_predicted: int
    n_true: int
    precision: float
    recall: float
    f1: float


def picking_scores_from_counts(
    n_true_positive: int, n_predicted: int, n_true: int
) -> PickingScores:
    """Precision, recall and F1 from counts (see :class:`PickingScores` for empty cases)."""
    precision = n_true_positive / n_predicted if n_predicted else 1.0
    recall = n_true_positive / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return PickingScores(n_true_positive, n_predicted, n_true, precision, recall, f1)


def picking_scores(
    predicted_px: torch.Tensor, true_px: torch.Tensor, radius_px: float
) -> PickingScores:
    """Precision, recall and F1 of picks ``(P, 2)`` against true centres ``(Q, 2)`` (pixels).

    Picks are matched one to one within ``radius_px`` by :func:`match_points`.
    """
    matched, _ = match_points(predicted_px, true_px, radius_px)
    return picking_scores_from_counts(
        int(matched.shape[0]), int(predicted_px.shape[0]), int(true_px.shape[0])
    )


# --------------------------------------------------------------------------------------------
# poses


def pose_error_deg(
    estimated_euler_deg: torch.Tensor, true_euler_deg: torch.Tensor, symmetry: str = "C1"
) -> torch.Tensor:
    """Geodesic angle between estimated and true poses modulo the map's symmetry.

    Args:
        estimated_euler_deg, true_euler_deg: ``(..., 3)`` RELION (rot, tilt, psi) in degrees.
        symmetry: point group of the map (``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I``...).

    Returns:
        ``(...)`` angles in degrees, in [0, 180]; symmetry-equivalent poses give 0.
    """
    estimated = euler_to_matrix(estimated_euler_deg.to(torch.float64))
    true = euler_to_matrix(
        true_euler_deg.to(device=estimated_euler_deg.device, dtype=torch.float64)
    )
    return angular_distance_sym_deg(estimated, true, symmetry)


def shift_error_A(estimated_origin_A: torch.Tensor, true_origin_A: torch.Tensor) -> torch.Tensor:
    """Distance between estimated and true RELION origins ``(..., 2)`` (x, y) in Å -> ``(...)``.

    The shift of a symmetric particle is unique (symmetry axes pass through the map centre), so
    no symmetry handling is needed.
    """
    diff = estimated_origin_A.to(torch.float64) - true_origin_A.to(torch.float64)
    return torch.linalg.vector_norm(diff, dim=-1)


# --------------------------------------------------------------------------------------------
# maps


@dataclass
class MapScore:
    """FSC of a map against the true map.

    Attributes:
        frequencies_invA: ``(N // 2 + 1,)`` shell frequencies in 1/Å.
        fsc: ``(N // 2 + 1,)`` FSC values.
        resolution_fsc05_A: resolution where the FSC falls below 0.5, Å.
        resolution_fsc0143_A: resolution where it falls below 0.143, Å (the map-vs-model-like
            criterion is 0.5; 0.143 is given for comparison with half-map FSCs).
    """

    frequencies_invA: torch.Tensor
    fsc: torch.Tensor
    resolution_fsc05_A: float
    resolution_fsc0143_A: float


def map_vs_truth(volume: torch.Tensor, true_volume: torch.Tensor, pixel_size_A: float) -> MapScore:
    """FSC between a ``(N, N, N)`` map and the true map on the same grid (voxel ``pixel_size_A`` Å).

    Raises:
        ValueError: the maps differ in shape or are not cubic.
    """
    if volume.shape != true_volume.shape:
        raise ValueError(
            f"map and true map differ in shape: {tuple(volume.shape)} vs {tuple(true_volume.shape)}"
        )
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"maps must be cubic (N, N, N), got {tuple(volume.shape)}")
    curve = fsc(volume, true_volume.to(volume.device))
    freqs = shell_frequencies(int(volume.shape[-1]), pixel_size_A, device=volume.device)
    return MapScore(
        frequencies_invA=freqs,
        fsc=curve,
        resolution_fsc05_A=float(resolution_at_threshold(curve, freqs, 0.5)),
        resolution_fsc0143_A=float(resolution_at_threshold(curve, freqs, 0.143)),
    )
