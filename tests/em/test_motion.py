"""Movie alignment math: sub-pixel peaks, motion model, dose-weighted sums, hot pixels, accuracy
against the simulator's truth at a realistic dose (1 e/Å² per frame)."""

from __future__ import annotations

import math

import pytest
import torch

from cryostack.em.dose import dose_weights
from cryostack.em.fourier import shift_images
from cryostack.em.motion import (
    MotionModel,
    align_movie,
    align_to_sum,
    alignment_spectra,
    detect_hot_pixels,
    dose_weight_factors,
    evaluate_motion_model,
    fit_motion_model,
    interpolate_weak_frames,
    noise_peak_z,
    patch_grid,
    replace_pixels,
    spatial_terms_for_grid,
    weighted_sums_ft,
)
from cryostack.em.simulate import simulate_micrograph, simulate_movie

DOSE = 1.0  # e/Å² per frame
PIXEL_A = 1.0


def blob_volume(n: int = 32, n_blobs: int = 12, sigma_px: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(n_blobs, 3, generator=g) - 0.5) * n * 0.5 + n // 2
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij")
    volume = torch.zeros(n, n, n)
    for cx, cy, cz in centres:
        volume += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma_px**2))
    return volume


def particle_signal(size: int, seed: int) -> torch.Tensor:
    """A noise-free micrograph of CTF-modulated particles with an ice gradient, unit std."""
    g = torch.Generator().manual_seed(seed)
    clean, truth = simulate_micrograph(
        blob_volume(), size * size // 1500, (size, size), pixel_size_A=PIXEL_A,
        defocus_u_A=15000.0, defocus_v_A=14000.0, defocus_angle_deg=20.0, snr=math.inf,
        ice_gradient=1.0, generator=g,
    )  # fmt: skip
    return clean / truth.signal_std


def smooth_image(shape: tuple[int, int], sigma_px: float, seed: int) -> torch.Tensor:
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ky = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    kernel = torch.exp(-2 * math.pi**2 * sigma_px**2 * (kx**2 + ky**2))
    image = torch.fft.irfft2(torch.fft.rfft2(noise) * kernel, s=shape)
    return ((image - image.mean()) / image.std()).float()


def rmse_without_offset(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """RMSE over frames (and positions) of (x, y) errors after removing the mean error."""
    err = (estimate - truth).double()
    err = err - err.mean(dim=0, keepdim=True)
    return float(err.pow(2).sum(-1).mean().sqrt())


# --------------------------------------------------------------------------------------------
# building blocks


def test_noise_free_shifts_are_recovered_to_a_hundredth_of_a_pixel() -> None:
    image = smooth_image((128, 160), 2.0, seed=0)
    true = torch.tensor([[0.0, 0.0], [2.3, -1.7], [-4.61, 3.05], [0.4, 0.45]])
    frames = shift_images(image.expand(4, -1, -1), true)
    spectra, ky, kx = alignment_spectra(frames, PIXEL_A, bfactor_A2=50.0, taper=False)
    shifts = align_to_sum(spectra, (128, 160), ky, kx, max_shift_px=20.0)
    torch.testing.assert_close(shifts, true, atol=0.01, rtol=0)


def test_patches_are_aligned_all_at_once() -> None:
    """Batched over a leading patch dimension: each batch gets its own shifts."""
    a, b = smooth_image((96, 96), 2.0, seed=1), smooth_image((96, 96), 2.0, seed=2)
    true = torch.tensor([[[0.0, 0.0], [1.25, 0.5]], [[0.0, 0.0], [-0.75, 2.0]]])
    frames = torch.stack([shift_images(a.expand(2, -1, -1), true[0]),
                          shift_images(b.expand(2, -1, -1), true[1])])  # fmt: skip
    spectra, ky, kx = alignment_spectra(frames, PIXEL_A, bfactor_A2=50.0, taper=False)
    shifts = align_to_sum(spectra, (96, 96), ky, kx, max_shift_px=10.0)
    assert shifts.shape == (2, 2, 2)
    torch.testing.assert_close(shifts, true, atol=0.01, rtol=0)


def test_motion_model_fit_recovers_a_smooth_field_despite_patch_offsets() -> None:
    shape, n_frames = (600, 800), 12
    _, _, centres = patch_grid(shape, 4, 3)
    terms = spatial_terms_for_grid(4, 3)
    assert terms == ("1", "x", "y", "xx", "xy", "yy")
    g = torch.Generator().manual_seed(3)
    true = MotionModel(torch.randn(2, 6, 3, generator=g, dtype=torch.float64), terms, shape, 12)
    shifts = evaluate_motion_model(true, centres[:, 0], centres[:, 1]).permute(1, 0, 2)  # (P,T,2)
    offsets = torch.randn(shifts.shape[0], 1, 2, generator=g, dtype=torch.float64) * 5
    fitted = fit_motion_model(centres, shifts + offsets, shape, terms)
    torch.testing.assert_close(fitted.coefficients, true.coefficients, atol=1e-8, rtol=0)
    at_origin = evaluate_motion_model(fitted, torch.tensor(0.0), torch.tensor(0.0))
    assert at_origin.shape == (n_frames, 2) and float(at_origin[0].abs().max()) == 0.0


@pytest.mark.parametrize(("dose", "n_frames"), [(1.0, 40), (3.0, 20)])
def test_factorised_dose_weights_match_dose_weights(dose: float, n_frames: int) -> None:
    shape = (64, 48)
    frame, frequency = dose_weight_factors(shape, 1.3, n_frames, dose, 2.0, voltage_kV=200)
    assert frame.shape[0] <= 8 and frame.shape[1] == n_frames  # a few terms suffice
    expected = dose_weights(shape, 1.3, n_frames, dose, 2.0, 200.0)
    factorised = torch.einsum("rt,rhw->thw", frame, frequency)
    torch.testing.assert_close(factorised, expected, atol=3e-4 * float(expected.max()), rtol=0)


def test_sums_of_aligned_identical_frames_follow_the_exposure_filter() -> None:
    image = smooth_image((64, 64), 1.0, seed=4)
    drift = torch.tensor([[0.0, 0.0], [1.5, -0.5], [3.0, -1.0], [4.5, -1.5]])
    spectra = torch.fft.rfft2(shift_images(image.expand(4, -1, -1), drift))
    terms = dose_weight_factors((64, 64), PIXEL_A, 4, 3.0)
    plain, weighted = weighted_sums_ft(spectra, -drift, terms)
    image_ft = torch.fft.rfft2(image)
    total_weight = dose_weights((64, 64), PIXEL_A, 4, 3.0).sum(0)
    assert weighted is not None
    keep = torch.ones(64, 33, dtype=torch.bool)
    keep[32, :] = keep[:, 32] = False  # half-pixel shifts are undefined at the Nyquist frequency
    inside = keep
    torch.testing.assert_close(plain[inside], 4 * image_ft[inside], atol=1e-3, rtol=1e-4)
    expected = image_ft * total_weight
    torch.testing.assert_close(weighted[inside], expected[inside], atol=2e-3, rtol=1e-3)


def test_hot_pixels_are_found_and_replaced() -> None:
    g = torch.Generator().manual_seed(5)
    frames = torch.poisson(torch.full((20, 64, 64), 1.0), generator=g)
    hot = [(3, 7), (40, 12), (63, 63)]
    for y, x in hot:
        frames[:, y, x] += 30.0
    mask = detect_hot_pixels(frames.sum(0))
    assert sorted(map(tuple, mask.nonzero().tolist())) == hot
    fixed = replace_pixels(frames, mask)
    assert float(fixed.sum(0).max()) < 60  # 20 frames of ~1 count
    assert torch.equal(fixed[:, ~mask], frames[:, ~mask])


# --------------------------------------------------------------------------------------------
# whole movies at 1 e/Å² per frame


@pytest.fixture(scope="module")
def drifting_movie() -> tuple[torch.Tensor, torch.Tensor]:
    frames, truth = simulate_movie(
        particle_signal(768, seed=11), 24, dose_per_frame_e_A2=DOSE, pixel_size_A=PIXEL_A,
        contrast=0.1, drift_px_per_frame=1.0, generator=torch.Generator().manual_seed(11),
    )  # fmt: skip
    return frames, truth.drift_px


def test_global_drift_error_is_below_a_fifth_of_a_pixel(
    drifting_movie: tuple[torch.Tensor, torch.Tensor],
) -> None:
    frames, true_drift = drifting_movie
    assert frames.dtype == torch.uint8 and float(frames.float().mean()) == pytest.approx(1.0, 0.02)
    result = align_movie(frames, PIXEL_A, dose_per_frame_e_A2=DOSE)
    assert float((true_drift[-1] - true_drift[0]).norm()) > 10  # a real drift was corrected
    assert rmse_without_offset(result.drift_px, true_drift) <= 0.2
    assert float(result.drift_px[0].abs().max()) == 0.0  # relative to the first frame
    assert result.aligned and result.peak_z is not None  # the signal was found significant
    assert float(result.peak_z.median()) > 1.5 * result.min_peak_z
    assert result.dose_weighted_sum is not None
    assert result.aligned_sum.shape == result.dose_weighted_sum.shape == (768, 768)
    # the plain sum keeps the counts: 24 frames of 1 count per pixel on average
    assert float(result.aligned_sum.mean()) == pytest.approx(24.0, rel=0.02)


def test_frame_range_binning_and_gain(drifting_movie: tuple[torch.Tensor, torch.Tensor]) -> None:
    frames, true_drift = drifting_movie
    g = torch.Generator().manual_seed(12)
    gain = (1.0 + 0.1 * torch.randn(768, 768, generator=g)).clamp(min=0.5)
    raw = frames[4:20].float() / gain  # frames 5-20, as a detector would give them before gain
    result = align_movie(raw, PIXEL_A, gain=gain, binning=2.0, first_frame=4, dose_per_frame_e_A2=1)
    assert result.aligned_sum.shape == (384, 384) and result.pixel_size_A == pytest.approx(2.0)
    assert rmse_without_offset(result.drift_px, true_drift[4:20] - true_drift[4]) <= 0.25
    with pytest.raises(ValueError, match="gain reference shape"):
        align_movie(raw, PIXEL_A, gain=gain[:100])


def test_local_alignment_reduces_error_where_local_motion_exists() -> None:
    size = 512
    frames, truth = simulate_movie(
        particle_signal(size, seed=21), 24, dose_per_frame_e_A2=DOSE, pixel_size_A=PIXEL_A,
        contrast=0.1, drift_px_per_frame=1.0, local_motion_px=2.0,
        generator=torch.Generator().manual_seed(21),
    )  # fmt: skip
    nodes_y, nodes_x = torch.meshgrid(truth.grid_y_px, truth.grid_x_px, indexing="ij")
    true_field = truth.drift_px[:, None, None, :] + truth.local_grid_px  # (T, 5, 5, 2)
    global_only = align_movie(frames, PIXEL_A)
    local = align_movie(frames, PIXEL_A, patches_x=3, patches_y=3)
    assert local.model is not None and local.patch_shifts_px is not None
    assert local.patch_shifts_px.shape == (9, 24, 2)
    error_global = rmse_without_offset(global_only.displacement_px(nodes_x, nodes_y), true_field)
    error_local = rmse_without_offset(local.displacement_px(nodes_x, nodes_y), true_field)
    assert error_global > 1.0  # the local motion is real
    assert error_local < 0.5 * error_global


# --------------------------------------------------------------------------------------------
# no signal: no alignment (regression: frames of pure noise used to random-walk by ~50 px per frame)


def test_frames_without_signal_are_not_aligned_to_noise() -> None:
    """Shot noise only (9 counts per pixel and frame, as at 1 e/Å² and 3 Å/px): the peaks are no
    more significant than noise maxima, so the drift stays zero instead of chasing noise."""
    g = torch.Generator().manual_seed(31)
    frames = torch.poisson(torch.full((16, 256, 256), 9.0), generator=g)
    result = align_movie(frames, 3.0, dose_per_frame_e_A2=1.0, max_shift_px=20.0)
    assert not result.aligned and result.peak_z is not None
    n_window = (2 * 20 // 1 + 1) ** 2  # about: the grid spacing is ~1 px at this size
    assert result.min_peak_z == pytest.approx(noise_peak_z(n_window) + 2.0, abs=0.5)
    assert float(result.peak_z.median()) < noise_peak_z(n_window)
    assert torch.equal(result.drift_px, torch.zeros(16, 2, dtype=torch.float64))
    torch.testing.assert_close(result.aligned_sum, frames.sum(0), atol=1e-2, rtol=0)
    local = align_movie(frames, 3.0, patches_x=2, patches_y=2, max_shift_px=20.0)
    assert not local.aligned and local.model is None and local.aligned_sum.shape == (256, 256)
    # forcing the alignment (threshold 0) follows the noise, but never beyond the search radius
    forced = align_movie(frames, 3.0, max_shift_px=20.0, min_peak_z=0.0)
    assert forced.aligned and float(forced.drift_px.abs().max()) <= 40.0


def test_weak_frames_get_drift_interpolated_from_their_neighbours() -> None:
    drift = torch.tensor([[0.0, 0.0], [1.0, 2.0], [40.0, -30.0], [3.0, 6.0], [9.0, 9.0]])
    weak = torch.tensor([True, False, True, False, True])
    fixed = interpolate_weak_frames(drift, weak)
    expected = torch.tensor([[1.0, 2.0], [1.0, 2.0], [2.0, 4.0], [3.0, 6.0], [3.0, 6.0]])
    torch.testing.assert_close(fixed, expected - expected[0])  # relative to the first frame
    torch.testing.assert_close(
        interpolate_weak_frames(drift, torch.zeros(5, dtype=torch.bool)), drift
    )


def test_a_frame_of_pure_noise_in_a_good_movie_follows_its_neighbours(
    drifting_movie: tuple[torch.Tensor, torch.Tensor],
) -> None:
    frames, true_drift = drifting_movie
    g = torch.Generator().manual_seed(32)
    spoiled = frames.clone()
    spoiled[10] = torch.poisson(torch.full(frames.shape[1:], 1.0), generator=g).to(frames.dtype)
    result = align_movie(spoiled, PIXEL_A)
    assert result.aligned and result.peak_z is not None
    assert float(result.peak_z[10]) < result.min_peak_z < float(result.peak_z.median())
    assert rmse_without_offset(result.drift_px, true_drift) <= 0.25
