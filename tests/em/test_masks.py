"""Soft circle/sphere masks and thresholded map masks."""

from __future__ import annotations

import math

import torch

from cryostack.em.masks import circle_mask, mask_from_map, sphere_mask


def test_circle_mask_raised_cosine_edge() -> None:
    mask = circle_mask((32, 32), radius_px=5.0, soft_edge_px=4.0)
    row = mask[16, 16:]  # along +x from the centre
    assert torch.allclose(row[:6], torch.ones(6))
    # distance 2 into the 4 px edge: 0.5 (1 + cos(pi/2)) = 0.5
    assert math.isclose(row[7].item(), 0.5, abs_tol=1e-6)
    assert math.isclose(row[6].item(), 0.5 * (1 + math.cos(math.pi / 4)), abs_tol=1e-6)
    assert torch.all(row[9:] == 0)
    hard = circle_mask((33, 33), radius_px=10.0)
    assert hard.sum().item() == sum(
        1 for y in range(33) for x in range(33) if (x - 16) ** 2 + (y - 16) ** 2 <= 100
    )
    off = circle_mask((32, 32), radius_px=2.0, center=(5.0, 20.0))
    assert off[20, 5] == 1 and off[20, 8] == 0 and off[5, 20] == 0


def test_sphere_mask_volume() -> None:
    mask = sphere_mask((40, 40, 40), radius_px=12.0, soft_edge_px=0.0)
    assert abs(mask.sum().item() / (4 / 3 * math.pi * 12**3) - 1) < 0.02
    soft = sphere_mask((40, 40, 40), radius_px=10.0, soft_edge_px=6.0)
    # a symmetric raised cosine adds exactly half its width to the effective radius (to 1st order)
    assert abs(soft.sum().item() / (4 / 3 * math.pi * 13**3) - 1) < 0.05


def test_mask_from_map_extends_and_softens_like_sphere() -> None:
    vol = torch.zeros(32, 32, 32)
    vol[16, 16, 16] = 1.0
    mask = mask_from_map(vol, 0.5, extend_px=3.0, soft_edge_px=4.0, step_px=0.25)
    expected = sphere_mask((32, 32, 32), radius_px=3.0, soft_edge_px=4.0)
    assert (mask - expected).abs().max() < 0.1
    assert mask[16, 16, 16] == 1 and mask[16, 16, 30] == 0
    # no extension or edge: plain threshold
    blob = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask_from_map(blob, 0.7), (blob >= 0.7).float())
