"""Simulated particles, micrographs and movies: conventions and ground truth."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import mrcfile
import pytest
import torch

from cryostack.em.ctf import ctf_zeros_invA
from cryostack.em.fourier import shift_images
from cryostack.em.projection import project_volume
from cryostack.em.rotations import euler_to_matrix, random_rotations
from cryostack.em.simulate import (
    evaluate_local_motion,
    extract_boxes,
    movie_contrast_for_snr,
    random_positions,
    simulate_micrograph,
    simulate_movie,
    simulate_particle_images,
)

PIXEL_A = 2.0
Q0 = 0.1


def blob_volume(n: int = 32, n_blobs: int = 12, sigma_px: float = 1.2) -> torch.Tensor:
    """An asymmetric test object: Gaussian blobs at random places around the centre."""
    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(n_blobs, 3, generator=g) - 0.5) * n * 0.5 + n // 2
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij")
    volume = torch.zeros(n, n, n)
    for cx, cy, cz in centres:
        volume += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma_px**2))
    return volume


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    return blob_volume()


def smooth_image(shape: tuple[int, int], sigma_px: float, seed: int) -> torch.Tensor:
    """Gaussian-filtered white noise with zero mean and unit standard deviation."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ky = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    kernel = torch.exp(-2 * math.pi**2 * sigma_px**2 * (kx**2 + ky**2))
    image = torch.fft.irfft2(torch.fft.rfft2(noise) * kernel, s=shape)
    return ((image - image.mean()) / image.std()).to(torch.float32)


def radial_average(power: torch.Tensor, pixel_size_A: float, bin_invA: float) -> torch.Tensor:
    """Radial average of an rfft2-layout power spectrum of a square image, bins of ``bin_invA``."""
    n = power.shape[0]
    ky = torch.fft.fftfreq(n, d=pixel_size_A)[:, None]
    kx = torch.fft.rfftfreq(n, d=pixel_size_A)[None, :]
    bins = (torch.sqrt(kx**2 + ky**2) / bin_invA).long().flatten()
    total = torch.zeros(int(bins.max()) + 1, dtype=power.dtype).index_add_(0, bins, power.flatten())
    count = torch.zeros_like(total).index_add_(0, bins, torch.ones_like(power).flatten())
    return total / count.clamp(min=1)


def measured_shift_px(
    a: torch.Tensor, b: torch.Tensor, lowpass_px: float = 2.0, upsample: int = 8
) -> torch.Tensor:
    """(x, y) shift moving ``a`` onto ``b``: peak of the Hann-windowed, Gaussian-low-passed
    cross-correlation, interpolated by zero-padding its spectrum ``upsample`` times."""
    h, w = a.shape
    window = torch.outer(torch.hann_window(h, dtype=a.dtype), torch.hann_window(w, dtype=a.dtype))
    fa = torch.fft.fft2((a - a.mean()) * window)
    fb = torch.fft.fft2((b - b.mean()) * window)
    k2 = (
        torch.fft.fftfreq(h, dtype=a.dtype)[:, None] ** 2 + torch.fft.fftfreq(w, dtype=a.dtype) ** 2
    )
    lowpass = torch.exp(-2 * math.pi**2 * lowpass_px**2 * k2)
    cross = torch.fft.fftshift(fb * fa.conj() * lowpass)
    big = torch.zeros(h * upsample, w * upsample, dtype=cross.dtype)
    y0, x0 = (h * upsample) // 2 - h // 2, (w * upsample) // 2 - w // 2
    big[y0 : y0 + h, x0 : x0 + w] = cross
    cc = torch.fft.ifft2(torch.fft.ifftshift(big)).real
    hh, ww = cc.shape
    iy, ix = divmod(int(cc.argmax()), ww)

    def refine(m: float, c: float, p: float) -> float:
        return 0.5 * (m - p) / (m - 2 * c + p)

    dy = refine(float(cc[(iy - 1) % hh, ix]), float(cc[iy, ix]), float(cc[(iy + 1) % hh, ix]))
    dx = refine(float(cc[iy, (ix - 1) % ww]), float(cc[iy, ix]), float(cc[iy, (ix + 1) % ww]))
    sy = ((iy + hh // 2) % hh - hh // 2 + dy) / upsample
    sx = ((ix + ww // 2) % ww - ww // 2 + dx) / upsample
    return torch.tensor([sx, sy], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# positions


def test_random_positions_are_separated_inside_margins_and_reproducible() -> None:
    shape, min_distance, margin = (300, 400), 30.0, 20.0
    a = random_positions(60, shape, min_distance, margin, torch.Generator().manual_seed(5))
    b = random_positions(60, shape, min_distance, margin, torch.Generator().manual_seed(5))
    c = random_positions(60, shape, min_distance, margin, torch.Generator().manual_seed(6))
    assert a.shape == (60, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    distances = torch.cdist(a.double(), a.double()) + 1e9 * torch.eye(60)
    assert float(distances.min()) >= min_distance
    assert float(a[:, 0].min()) >= margin and float(a[:, 0].max()) <= shape[1] - 1 - margin
    assert float(a[:, 1].min()) >= margin and float(a[:, 1].max()) <= shape[0] - 1 - margin


def test_random_positions_reports_impossible_requests() -> None:
    with pytest.raises(ValueError, match="could only place"):
        random_positions(50, (100, 100), 40.0, 10.0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="margin"):
        random_positions(1, (100, 100), 1.0, 60.0)


# ---------------------------------------------------------------------------------------------
# particle images


def _particles(volume: torch.Tensor, snr: float, seed: int, **ctf: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rotations = random_rotations(6, torch.Generator().manual_seed(11))
    params = {"defocus_u_A": 12000.0, "defocus_v_A": 11000.0, "defocus_angle_deg": 30.0} | ctf
    return simulate_particle_images(
        volume, rotations, torch.zeros(6, 2), pixel_size_A=PIXEL_A, snr=snr, generator=g, **params
    )


def test_particle_images_are_deterministic(volume: torch.Tensor) -> None:
    a, b, c = _particles(volume, 1.0, 3), _particles(volume, 1.0, 3), _particles(volume, 1.0, 4)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_particle_noise_matches_the_requested_snr(volume: torch.Tensor) -> None:
    clean = _particles(volume, math.inf, 0)
    noisy = _particles(volume, 10.0, 0)
    measured_snr = clean.var(dim=(-2, -1)).mean() / (noisy - clean).var()
    assert float(measured_snr) == pytest.approx(10.0, rel=0.1)
    high = _particles(volume, 100.0, 0)
    for image, reference in zip(high, clean, strict=True):
        corr = torch.corrcoef(torch.stack([image.flatten(), reference.flatten()]))[0, 1]
        assert float(corr) > 0.99


def test_protein_is_white_and_origins_follow_relion(volume: torch.Tensor) -> None:
    """With no defocus and no Cs the CTF is the constant +Q0: image = Q0 * shifted projection."""
    rotations = random_rotations(4, torch.Generator().manual_seed(2))
    origins_A = torch.tensor([[4.0, -6.0], [0.0, 2.0], [-8.0, 0.0], [2.0, 2.0]])
    images = simulate_particle_images(
        volume, rotations, origins_A, pixel_size_A=PIXEL_A, defocus_u_A=0.0, defocus_v_A=0.0,
        defocus_angle_deg=0.0, cs_mm=0.0, amplitude_contrast=Q0, snr=math.inf,
    )  # fmt: skip
    projections = project_volume(volume, rotations)
    for image, projection, origin in zip(images, projections, origins_A, strict=True):
        # the particle centre is at N//2 - origin / pixel: content moves by -origin
        dx, dy = (-origin / PIXEL_A).round().long().tolist()
        expected = Q0 * torch.roll(projection, (dy, dx), dims=(-2, -1))
        torch.testing.assert_close(image, expected, atol=1e-4 * float(projection.max()), rtol=0)
    assert float(images.sum(dim=(-2, -1)).min()) > 0


def test_particle_ctf_zeros_match_theory(volume: torch.Tensor) -> None:
    images = _particles(volume, math.inf, 0, defocus_u_A=15000.0, defocus_v_A=15000.0)
    power = (torch.fft.rfft2(images).abs() ** 2).sum(0)
    zeros = ctf_zeros_invA(15000.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=Q0, n_zeros=1)
    n = images.shape[-1]
    ky = torch.fft.fftfreq(n, d=PIXEL_A)[:, None]
    kx = torch.fft.rfftfreq(n, d=PIXEL_A)[None, :]
    s = torch.sqrt(kx**2 + ky**2)
    at_zero = power[(s - float(zeros[0])).abs() < 0.002].mean()
    around = power[((s - float(zeros[0])).abs() > 0.008) & ((s - float(zeros[0])).abs() < 0.012)]
    assert float(at_zero) < 0.05 * float(around.mean())


# ---------------------------------------------------------------------------------------------
# micrographs


def _micrograph(volume: torch.Tensor, snr: float, **kwargs: float) -> tuple:
    params = {
        "pixel_size_A": PIXEL_A,
        "defocus_u_A": 15000.0,
        "defocus_v_A": 15000.0,
        "defocus_angle_deg": 0.0,
    } | kwargs
    return simulate_micrograph(
        volume, 80, (512, 512), snr=snr, generator=torch.Generator().manual_seed(3), **params
    )


def test_micrograph_power_spectrum_has_minima_at_ctf_zeros(volume: torch.Tensor) -> None:
    micrograph, truth = _micrograph(volume, math.inf)
    assert micrograph.shape == (512, 512) and truth.positions_px.shape == (80, 2)
    bin_invA = 0.25 / 256
    profile = radial_average(torch.fft.rfft2(micrograph).abs() ** 2, PIXEL_A, bin_invA)
    zeros = ctf_zeros_invA(15000.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=Q0, n_zeros=6)
    for s0 in zeros.tolist():
        i = round(s0 / bin_invA)
        local = profile[i - 5 : i + 6]  # zeros are >= 11 bins apart here
        assert abs(int(local.argmin()) - 5) <= 1, f"minimum not at the CTF zero {s0:.4f} 1/Å"
        assert float(local.min()) < 0.05 * float(local.max())


def test_micrograph_truth_matches_the_particles(volume: torch.Tensor) -> None:
    """Without defocus the CTF is +Q0, so the micrograph is -Q0 x the projections (protein dark)."""
    micrograph, truth = _micrograph(
        volume, math.inf, defocus_u_A=0.0, defocus_v_A=0.0, cs_mm=0.0, amplitude_contrast=Q0,
        min_distance_px=34.0,
    )  # fmt: skip
    n = volume.shape[-1]
    boxes = extract_boxes(micrograph, truth.positions_px, n)
    projections = project_volume(volume, euler_to_matrix(truth.euler_deg))
    fractions = truth.positions_px - truth.positions_px.round()
    projections = shift_images(projections, fractions)  # boxes are cut at whole pixels
    assert float(boxes.sum(dim=(-2, -1)).max()) < 0
    for box, projection in zip(boxes, projections, strict=True):
        corr = torch.corrcoef(torch.stack([-box.flatten(), projection.flatten()]))[0, 1]
        assert float(corr) > 0.995


def test_micrograph_snr_noise_and_ice(volume: torch.Tensor) -> None:
    clean, truth_clean = _micrograph(volume, math.inf)
    noisy, truth = _micrograph(volume, 0.5)
    assert torch.equal(truth.positions_px, truth_clean.positions_px)
    noise = noisy - clean
    assert float(noise.std()) == pytest.approx(truth.noise_std, rel=0.02)
    n = volume.shape[-1]
    signal_var = extract_boxes(clean, truth.positions_px, n).var(dim=(-2, -1)).mean()
    assert float(signal_var / noise.var()) == pytest.approx(0.5, rel=0.05)
    icy, truth_icy = _micrograph(volume, math.inf, ice_gradient=4.0)
    ramp = icy - clean
    angle = math.radians(truth_icy.ice_gradient_angle_deg)
    corner_values = [float(ramp[0, 0]), float(ramp[-1, -1]), float(ramp[0, -1]), float(ramp[-1, 0])]
    assert max(corner_values) - min(corner_values) == pytest.approx(
        4.0 * truth.signal_std, rel=1e-3
    )
    # thicker (darker) ice towards the returned direction
    dark_x, dark_y = math.cos(angle), math.sin(angle)
    assert float(ramp[256 + round(200 * dark_y), 256 + round(200 * dark_x)]) < 0


# ---------------------------------------------------------------------------------------------
# movies


def test_movie_mean_count_equals_dose_times_pixel_area_and_is_deterministic() -> None:
    signal = smooth_image((128, 128), 3.0, seed=0)
    kwargs = {"dose_per_frame_e_A2": 1.2, "pixel_size_A": 1.5, "contrast": 0.2}
    a, truth = simulate_movie(signal, 8, generator=torch.Generator().manual_seed(1), **kwargs)
    b, _ = simulate_movie(signal, 8, generator=torch.Generator().manual_seed(1), **kwargs)
    assert a.shape == (8, 128, 128) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    expected = 1.2 * 1.5**2
    assert truth.expected_counts_per_pixel == pytest.approx(expected)
    # Poisson: the mean over 8 * 128² pixels has a relative error of ~1/sqrt(8 * 128² * 2.7)
    assert float(a.double().mean()) == pytest.approx(expected, rel=0.01)
    assert float(a.double().var()) > expected  # shot noise plus the signal


def test_movie_drift_truth_matches_measured_shift() -> None:
    signal = smooth_image((256, 256), 2.0, seed=2)
    frames, truth = simulate_movie(
        signal, 6, dose_per_frame_e_A2=4.0, pixel_size_A=2.0, contrast=0.5,
        drift_px_per_frame=1.3, generator=torch.Generator().manual_seed(2),
    )  # fmt: skip
    assert truth.drift_px.shape == (6, 2) and torch.equal(
        truth.drift_px[0], torch.zeros(2).double()
    )
    measured = measured_shift_px(frames[0].double(), frames[-1].double())
    expected = truth.drift_px[-1] - truth.drift_px[0]
    assert float(expected.norm()) > 3.0
    torch.testing.assert_close(measured, expected, atol=0.2, rtol=0)


def test_movie_local_motion_truth_matches_a_patch_shift() -> None:
    signal = smooth_image((256, 256), 2.0, seed=0)
    frames, truth = simulate_movie(
        signal, 5, dose_per_frame_e_A2=5.0, pixel_size_A=2.0, contrast=0.5,
        drift_px_per_frame=0.0, local_motion_px=0.7, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert truth.local_grid_px.shape == (5, 5, 5, 2)
    assert float(truth.local_grid_px[0].abs().max()) == 0.0
    corner = truth.local_grid_px[-1, 0, 0]  # node (x=0, y=0) after the last frame
    assert float(corner.norm()) > 0.5
    # a 64-px patch around (32, 32): its displacement is the field near its centre
    patch = (slice(0, 64), slice(0, 64))
    measured = measured_shift_px(frames[0][patch].double(), frames[-1][patch].double())
    at_centre = evaluate_local_motion(
        truth.local_coefficients, (256, 256), torch.tensor(31.5), torch.tensor(31.5)
    )[-1]
    torch.testing.assert_close(measured, at_centre, atol=0.3, rtol=0)


def test_movie_gain_round_trip_recovers_counts() -> None:
    signal = smooth_image((64, 64), 2.0, seed=4)
    kwargs = {"dose_per_frame_e_A2": 2.0, "pixel_size_A": 1.0, "local_motion_px": 1.0}
    counts, _ = simulate_movie(signal, 4, generator=torch.Generator().manual_seed(9), **kwargs)
    raw, truth = simulate_movie(
        signal, 4, gain_sigma=0.1, generator=torch.Generator().manual_seed(9), **kwargs
    )
    assert raw.dtype == torch.float32 and truth.gain is not None
    assert float(truth.gain.std()) == pytest.approx(0.1, rel=0.15)
    torch.testing.assert_close(raw * truth.gain, counts.float(), atol=1e-4, rtol=1e-5)


def test_movie_dose_filter_attenuates_signal_power_as_predicted() -> None:
    n, n_frames, dose, contrast = 128, 10, 8.0, 0.3
    signal = smooth_image((n, n), 1.5, seed=5)
    frames, _ = simulate_movie(
        signal, n_frames, dose_per_frame_e_A2=dose, pixel_size_A=1.0, contrast=contrast,
        drift_px_per_frame=0.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    spectra = torch.fft.rfft2(frames.double() - frames.double().mean(dim=(-2, -1), keepdim=True))
    s = torch.sqrt(torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None, :] ** 2)
    band = (s > 0.05) & (s < 0.1)  # 10 to 20 Å
    shot_noise = dose * n * n  # expected |FT|² of Poisson noise: the total count
    excess = torch.stack([(spec.abs() ** 2)[band].mean() - shot_noise for spec in spectra])
    # predicted signal power: (dose * contrast)² |S(k)|² exp(-D_t / N_e(k)), D_t mid-frame dose
    k_invA = s[band].double()
    n_e = 0.245 * k_invA**-1.665 + 2.81
    signal_power = (torch.fft.rfft2(signal.double()).abs() ** 2)[band]
    doses = (torch.arange(n_frames, dtype=torch.float64) + 0.5) * dose
    predicted = torch.stack(
        [(dose * contrast) ** 2 * (signal_power * torch.exp(-d / n_e)).mean() for d in doses]
    )
    assert float(excess[0]) == pytest.approx(float(predicted[0]), rel=0.15)
    assert float(excess[4]) == pytest.approx(float(predicted[4]), rel=0.15)
    assert float(excess[0] / excess[-1]) > 10.0


# ---------------------------------------------------------------------------------------------
# oracle: RELION's relion_project applies the same CTF, contrast and origin conventions

_STAR_HEADER = """# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 opticsGroup1 300.0 2.7 0.1 {pixel:.3f} {box} 2

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnDefocusU #7
_rlnDefocusV #8
_rlnDefocusAngle #9
_rlnOpticsGroup #10
"""


@pytest.mark.relion
def test_particle_images_match_relion_project_with_ctf_and_origins(
    relion: str, tmp_path: Path
) -> None:
    volume = blob_volume(48, 14, 1.5)
    with mrcfile.new(tmp_path / "map.mrc") as mrc:
        mrc.set_data(volume.numpy())
        mrc.voxel_size = PIXEL_A
    angles = torch.tensor([[10.0, 40.0, 70.0], [120.0, 80.0, -30.0], [-60.0, 150.0, 15.0]])
    origins_A = torch.tensor([[4.0, -6.0], [-3.0, 2.5], [0.0, 8.0]])
    defocus_u = torch.tensor([12000.0, 18000.0, 9000.0])
    defocus_v = torch.tensor([11000.0, 17000.0, 9500.0])
    defocus_angle = torch.tensor([30.0, -20.0, 75.0])
    rows = [
        f"{i + 1:06d}@none.mrcs {a[0]:.3f} {a[1]:.3f} {a[2]:.3f} {o[0]:.3f} {o[1]:.3f} "
        f"{u:.1f} {v:.1f} {t:.2f} 1"
        for i, (a, o, u, v, t) in enumerate(
            zip(
                angles.tolist(),
                origins_A.tolist(),
                defocus_u,
                defocus_v,
                defocus_angle,
                strict=True,
            )
        )
    ]
    star = tmp_path / "particles.star"
    star.write_text(_STAR_HEADER.format(pixel=PIXEL_A, box=48) + "\n".join(rows) + "\n")
    subprocess.run(
        [relion, "--i", "map.mrc", "--o", "proj", "--ang", star.name, "--ctf", "--angpix", "2"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    with mrcfile.open(tmp_path / "proj.mrcs") as mrc:
        reference = torch.from_numpy(mrc.data.astype("float64"))
    ours = simulate_particle_images(
        volume, euler_to_matrix(angles), origins_A, pixel_size_A=PIXEL_A, defocus_u_A=defocus_u,
        defocus_v_A=defocus_v, defocus_angle_deg=defocus_angle, snr=math.inf,
    ).double()  # fmt: skip
    for image, ref in zip(ours, reference, strict=True):
        corr = torch.corrcoef(torch.stack([image.flatten(), ref.flatten()]))[0, 1]
        assert float(corr) > 0.999
        assert float((image * ref).sum() / (ref * ref).sum()) == pytest.approx(1.0, rel=0.01)


def test_movie_contrast_gives_the_frame_sum_the_requested_snr_damage_included() -> None:
    """The demo's dose (20 frames of 1 e/Å² on 3 Å pixels): the frame sum's SNR, measured as
    (variance - mean) / mean of the counts (Poisson noise variance = mean), is the requested one.
    Ignoring the radiation damage (``sqrt(snr / (c T))``) gave about 0.8 of it."""
    signal = smooth_image((256, 256), 1.0, seed=7)
    n_frames, snr = 20, 0.5
    optics = {"dose_per_frame_e_A2": 1.0, "pixel_size_A": 3.0}
    contrast = movie_contrast_for_snr(signal, snr, n_frames, **optics)
    naive = math.sqrt(snr / (9.0 * n_frames))
    assert contrast > 1.1 * naive  # the damage costs the sum signal
    frames, _ = simulate_movie(
        signal, n_frames, contrast=contrast, drift_px_per_frame=0.0,
        generator=torch.Generator().manual_seed(7), **optics,
    )  # fmt: skip
    total = frames.double().sum(0)
    measured = (total.var() - total.mean()) / total.mean()
    assert float(measured) == pytest.approx(snr, rel=0.05)
