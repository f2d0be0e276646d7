"""Particle picking math: LoG scales, NCC, peaks with NMS and edges, accuracy on simulations."""

from __future__ import annotations

import math

import pytest
import torch

from cryostack.em.picking import (
    Picks,
    blob_scores,
    find_picks,
    pick_blobs,
    pick_templates,
    robust_standardise,
    rotate_images,
    suppress_neighbours,
    template_scores,
)
from cryostack.em.projection import project_volume
from cryostack.em.rotations import random_rotations
from cryostack.em.scoring import picking_scores
from cryostack.em.simulate import paste_images, simulate_micrograph
from cryostack.io.atomic_model import model_to_map, shipped_model_path

PIXEL_A = 3.0
DIAMETER_A = 140.0  # TRPV1 is about 130 x 140 Å


def dark_discs(shape: tuple[int, int], centres: list[tuple[float, float, float]]) -> torch.Tensor:
    """A micrograph of dark, soft-edged discs (x, y, diameter in px) on a zero background."""
    y, x = torch.meshgrid(
        torch.arange(shape[0], dtype=torch.float32),
        torch.arange(shape[1], dtype=torch.float32),
        indexing="ij",
    )
    image = torch.zeros(shape)
    for cx, cy, d in centres:
        r = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        image -= torch.sigmoid((d / 2 - r) / 1.0)
    return image


def test_log_finds_dark_discs_with_their_diameters() -> None:
    discs = [(60.0, 70.0, 20.0), (180.0, 60.0, 30.0), (120.0, 180.0, 40.0)]
    image = dark_discs((256, 256), discs)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    noisy = image + 0.2 * noise
    picks = pick_blobs(noisy, 15.0, 45.0, n_scales=7, floor=5.0, use_energy=False)
    assert len(picks) == 3
    for cx, cy, d in discs:
        distance = torch.linalg.vector_norm(picks.positions_px - torch.tensor([cx, cy]), dim=-1)
        i = int(distance.argmin())
        assert distance[i] <= 1.5
        assert abs(float(picks.diameters_px[i]) - d) / d < 0.25  # scales are 20 % apart
    # bright discs: found at their centres with bright=True
    bright = -image + 0.2 * noise
    white = pick_blobs(bright, 15.0, 45.0, floor=5.0, bright=True, use_energy=False)
    assert len(white) == 3
    found_x = torch.sort(white.positions_px[:, 0]).values
    assert torch.allclose(
        found_x, torch.tensor([60.0, 120.0, 180.0], dtype=torch.float64), atol=1.5
    )


def test_scores_are_standardised_against_the_background() -> None:
    noise = torch.randn(512, 512, generator=torch.Generator().manual_seed(1))
    z = robust_standardise(noise * 7.0 + 3.0)
    assert abs(float(z.median())) < 0.02
    assert abs(float(z.std()) - 1.0) < 0.03
    score, _ = blob_scores(noise, [20.0, 30.0])
    assert abs(float(score.median()) - 0.5) < 0.3  # max of two standardised maps
    assert float(score.max()) < 6.0  # pure noise: no strong peak


def test_find_picks_suppresses_neighbours_and_excludes_edges() -> None:
    score = torch.zeros(100, 100)
    score[50, 50] = 10.0  # (x=50, y=50)
    score[50, 56] = 9.0  # 6 px away: suppressed at min distance 10
    score[50, 75] = 8.0  # 25 px away: kept
    score[3, 40] = 12.0  # near the top edge: excluded
    score[80, 30] = 0.5  # below the floor
    picks = find_picks(score, 10.0, floor=1.0, edge_px=5.0, labels=score * 2)
    assert picks.positions_px.tolist() == [[50.0, 50.0], [75.0, 50.0]]
    assert picks.scores.tolist() == [10.0, 8.0]
    assert picks.diameters_px.tolist() == [20.0, 16.0]
    only_best = find_picks(score, 10.0, floor=1.0, edge_px=5.0, max_picks=1)
    assert len(only_best) == 1
    assert len(picks.above(9.0)) == 1


def test_greedy_suppression_uses_euclidean_distance() -> None:
    points = torch.tensor([[0.0, 0.0], [7.0, 7.0], [9.0, 0.0], [10.0, 0.0], [30.0, 30.0]])
    kept = suppress_neighbours(points, 10.0)
    # (7, 7) is 9.9 px from (0, 0): suppressed; (10, 0) is exactly 10 px: kept
    assert kept.tolist() == [0, 3, 4]


def test_rotate_images_turns_from_x_towards_y() -> None:
    image = torch.zeros(1, 17, 17)
    image[0, 8, 8 + 5] = 1.0  # 5 px along +x from the centre (8, 8)
    rotated = rotate_images(image, torch.tensor([0.0, 90.0, 180.0]))
    assert rotated.shape == (1, 3, 17, 17)
    assert torch.allclose(rotated[0, 0], image[0], atol=1e-6)
    assert float(rotated[0, 1, 8 + 5, 8]) == pytest.approx(1.0, abs=1e-5)  # now along +y
    assert float(rotated[0, 2, 8, 8 - 5]) == pytest.approx(1.0, abs=1e-5)


def test_template_scores_are_pearson_correlations() -> None:
    g = torch.Generator().manual_seed(2)
    templates = torch.randn(3, 24, 24, generator=g)
    background = 0.1 * torch.randn(200, 200, generator=g)
    positions = torch.tensor([[50.0, 60.0], [140.0, 130.0]])
    # protein dark in the micrograph: the negated templates 0 and 2 are pasted
    image = background + paste_images(-templates[[0, 2]], positions, (200, 200))
    ncc, index = template_scores(image, templates, 12.0)
    for (x, y), t in zip(positions.long().tolist(), (0, 2), strict=True):
        assert float(ncc[y, x]) > 0.98
        assert int(index[y, x]) == t
    assert float(ncc.max()) <= 1.0 + 1e-4
    # away from the particles the correlation is small
    assert float(ncc[100:120, 10:30].abs().max()) < 0.5


@pytest.fixture(scope="module")
def trpv1() -> torch.Tensor:
    return torch.from_numpy(
        model_to_map(shipped_model_path("trpv1"), pixel_size_A=PIXEL_A, box_size_px=64)
    )


def simulated(
    volume: torch.Tensor, seed: int, snr: float = 0.05, size: int = 1024, n: int = 40
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A micrograph at the simulate protocol's defaults (1024 px, 40 particles, ice ramp)."""
    g = torch.Generator().manual_seed(seed)
    defocus = 10000.0 + 5000.0 * seed
    micrograph, truth = simulate_micrograph(
        volume,
        n,
        (size, size),
        pixel_size_A=PIXEL_A,
        defocus_u_A=defocus + 400.0,
        defocus_v_A=defocus - 400.0,
        defocus_angle_deg=20.0 * seed,
        snr=snr,
        ice_gradient=1.0,
        generator=g,
    )
    return micrograph, truth.positions_px, defocus


def f1_of(picks: Picks, truth_px: torch.Tensor) -> float:
    radius = DIAMETER_A / PIXEL_A / 4.0
    return picking_scores(picks.positions_px, truth_px, radius).f1


def test_blob_picker_f1_on_simulated_micrographs(trpv1: torch.Tensor) -> None:
    """Default SNR 0.05, default threshold: F1 >= 0.9 on each of three micrographs."""
    scores = []
    for seed in range(3):
        micrograph, truth_px, _ = simulated(trpv1, seed)
        picks = pick_blobs(micrograph, 100.0 / PIXEL_A, 160.0 / PIXEL_A, floor=2.0)
        scores.append(f1_of(picks.above(4.0), truth_px))
        # candidates above the floor hold (almost) every particle: re-thresholding can recover
        recall = picking_scores(picks.positions_px, truth_px, DIAMETER_A / PIXEL_A / 4).recall
        assert recall >= 0.9
    assert min(scores) >= 0.9, scores


def test_template_picker_finds_particles(trpv1: torch.Tensor) -> None:
    micrograph, truth_px, _ = simulated(trpv1, 1, snr=0.5, size=512, n=12)
    templates = project_volume(trpv1, random_rotations(6, torch.Generator().manual_seed(5)))
    picks = pick_templates(micrograph, templates, DIAMETER_A / PIXEL_A, in_plane_step_deg=30.0)
    assert f1_of(picks.above(5.0), truth_px) >= 0.9
    assert math.isfinite(float(picks.scores[0]))
