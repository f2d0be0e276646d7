"""Local resolution by windowed FSC: regions of known, different resolution are told apart."""

from __future__ import annotations

import pytest
import torch

from cryostack.em.filters import low_pass
from cryostack.em.local_resolution import (
    _windows,
    grid_axis,
    local_resolution,
    resolution_histogram,
    soft_window,
)
from cryostack.em.masks import sphere_mask

N = 64
PIXEL_A = 2.5


def two_region_half_maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared signal resolved to 10 Å where x < 32 and to 20 Å where x >= 32 (smooth 4 px
    transition), plus independent white noise of the signal's per-frequency power (the FSC is
    0.5 inside each region's band and ~0 beyond it)."""
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(N, N, N, generator=g)
    x = torch.arange(N, dtype=torch.float32)
    weight_a = torch.sigmoid(-(x - N / 2) / 2.0).expand(N, N, N)
    signal = weight_a * low_pass(white, 10.0, PIXEL_A, ndim=3) + (1 - weight_a) * low_pass(
        white, 20.0, PIXEL_A, ndim=3
    )
    half1 = signal + torch.randn(N, N, N, generator=g)
    half2 = signal + torch.randn(N, N, N, generator=g)
    return half1, half2


def test_windows_are_centred_on_the_grid() -> None:
    volume = torch.arange(N**3, dtype=torch.float32).reshape(N, N, N)
    axis = grid_axis(N, 5)
    assert N // 2 in axis.tolist() and axis.min() >= 0 and axis.max() < N
    windows = _windows(volume, 12, 5)
    assert windows.shape == (len(axis),) * 3 + (12,) * 3
    i, j, k = 3, 6, 2
    z, y, x = int(axis[i]), int(axis[j]), int(axis[k])
    expected = volume[z - 6 : z + 6, y - 6 : y + 6, x - 6 : x + 6]
    assert torch.equal(windows[i, j, k], expected)  # window centre at index w // 2
    corner = windows[0, 0, 0]  # periodic extension past the box edge
    assert corner[0, 0, 0] == volume[-6 + int(axis[0]), -6 + int(axis[0]), -6 + int(axis[0])]
    taper = soft_window(12)
    assert taper[6, 6, 6] == 1 and taper[0, 6, 6] < 0.01 and taper[6, 6, 9] == 1


def test_local_resolution_tells_two_regions_apart() -> None:
    half1, half2 = two_region_half_maps()
    mask = sphere_mask((N, N, N), 26.0, 4.0)
    result = local_resolution(half1, half2, PIXEL_A, mask=mask, window_px=20, step_px=4)
    inside = mask > 0.5
    x = torch.arange(N).expand(N, N, N)
    region_a = inside & (x < N // 2 - 8)  # away from the transition and the window overlap
    region_b = inside & (x >= N // 2 + 8)
    median_a = float(result.resolution_A[region_a].median())
    median_b = float(result.resolution_A[region_b].median())
    # measured: 9.4 and 19.0 Å
    assert median_a == pytest.approx(10.0, rel=0.2)
    assert median_b == pytest.approx(20.0, rel=0.2)
    assert result.resolution_A.shape == (N, N, N)
    assert torch.isfinite(result.resolution_A).all()
    assert result.resolution_A.min() >= 2 * PIXEL_A
    assert result.resolution_A.max() <= 20 * PIXEL_A  # clamped to the window size
    # only centres inside the mask were evaluated, on the grid
    centres = result.centres_zyx
    assert (mask[centres[:, 0], centres[:, 1], centres[:, 2]] > 0.01).all()
    assert ((centres - N // 2) % 4 == 0).all()


def test_threshold_05_is_more_conservative() -> None:
    half1, half2 = two_region_half_maps(seed=1)
    mask = sphere_mask((N, N, N), 20.0, 4.0)
    kwargs = {"mask": mask, "window_px": 20, "step_px": 8}
    at_0143 = local_resolution(half1, half2, PIXEL_A, **kwargs)  # type: ignore[arg-type]
    at_05 = local_resolution(half1, half2, PIXEL_A, threshold=0.5, **kwargs)  # type: ignore[arg-type]
    assert (at_05.centre_resolution_A >= at_0143.centre_resolution_A - 1e-4).all()
    assert at_05.centre_resolution_A.median() > at_0143.centre_resolution_A.median()


def test_histogram_and_bad_input() -> None:
    values = torch.tensor([4.0, 5.0, 5.5, 9.0, 10.0])
    edges, counts = resolution_histogram(values, n_bins=3)
    assert edges.tolist() == pytest.approx([4.0, 6.0, 8.0, 10.0])
    assert counts.tolist() == [3, 0, 2]
    half = torch.zeros(32, 32, 32)
    with pytest.raises(ValueError, match="no window centre lies inside the mask"):
        local_resolution(half, half, 1.0, mask=torch.zeros(32, 32, 32), window_px=12)
    with pytest.raises(ValueError, match="window of 40 px"):
        local_resolution(half, half, 1.0, window_px=40)
    with pytest.raises(ValueError, match="cubic and equal in shape"):
        local_resolution(half, torch.zeros(16, 16, 16), 1.0)
