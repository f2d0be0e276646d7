"""CTF estimation: accuracy against simulated truth, conventions, fit resolution, errors."""

from __future__ import annotations

import math

import pytest
import torch

from cryostack.em import ctf_estimation as ce
from cryostack.em.ctf import ctf_2d, ctf_at_frequencies
from cryostack.em.projection import project_volume
from cryostack.em.rotations import random_rotations
from cryostack.em.scoring import DefocusErrors, angle_difference_mod180_deg, defocus_errors
from cryostack.em.simulate import (
    add_gaussian_noise,
    apply_ctf,
    extract_boxes,
    paste_images,
    random_positions,
)

PIXEL_A = 1.25
OPTICS = ce.Optics(pixel_size_A=PIXEL_A, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)


def ctf_on_noise(
    shape: tuple[int, int],
    u: float,
    v: float,
    angle: float,
    *,
    phase_shift_deg: float = 0.0,
    bfactor_A2: float = 0.0,
    noise: float = 0.5,
    seed: int = 0,
) -> torch.Tensor:
    """White noise filtered by a known CTF plus white noise: Thon rings with a known answer."""
    g = torch.Generator().manual_seed(seed)
    ctf = ctf_2d(
        u,
        v,
        angle,
        voltage_kV=OPTICS.voltage_kV,
        cs_mm=OPTICS.cs_mm,
        amplitude_contrast=OPTICS.amplitude_contrast,
        phase_shift_deg=phase_shift_deg,
        bfactor_A2=bfactor_A2,
        pixel_size_A=PIXEL_A,
        shape=shape,
    )
    signal = apply_ctf(torch.randn(shape, generator=g), ctf)
    return signal + noise * torch.randn(shape, generator=g)


def errors(fit: ce.CtfFit, u: list[float], v: list[float], angle: list[float]) -> DefocusErrors:
    return defocus_errors(
        fit.defocus_u_A,
        fit.defocus_v_A,
        fit.defocus_angle_deg,
        torch.tensor(u, dtype=torch.float64),
        torch.tensor(v, dtype=torch.float64),
        torch.tensor(angle, dtype=torch.float64),
    )


def test_fast_search_model_equals_the_shared_ctf() -> None:
    """The matrix-product CTF of the searches is ctf_at_frequencies squared (RELION convention)."""
    px = ce._band_pixels(128, PIXEL_A, 1 / 40, 1 / 3, torch.device("cpu"))
    rows = ce._phase_terms(px, OPTICS)
    mean = torch.tensor([[12000.0, 30000.0]], dtype=torch.float64)
    astig = torch.tensor([[800.0, 0.0]], dtype=torch.float64)
    angle = torch.tensor([[35.0, 100.0]], dtype=torch.float64)
    phase = torch.tensor([[0.0, 70.0]], dtype=torch.float64)
    fast = ce._ctf2_fast(rows, mean, astig, angle, phase, OPTICS)
    ref = ctf_at_frequencies(
        px.kx[None],
        px.ky[None],
        mean + astig / 2,
        mean - astig / 2,
        angle,
        voltage_kV=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        phase_shift_deg=phase,
    )[..., 0, :]
    torch.testing.assert_close(fast.double(), ref**2, atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    ("u", "v", "angle"),
    [(15400.0, 14600.0, 30.0), (9700.0, 10300.0, 75.0)],
)
def test_recovers_defocus_and_angle_convention(u: float, v: float, angle: float) -> None:
    """End to end against truth: U is the defocus along the angle (from x), U >= V reported (the
    second case has V along the given angle: it comes back as U along angle + 90 = 165°)."""
    image = ctf_on_noise((768, 768), u, v, angle)
    settings = ce.CtfSearchSettings(tile_size_px=256, tile_overlap=0.5, max_resolution_A=4.0)
    fit, _ = ce.estimate_ctf(image, OPTICS, settings)
    err = errors(fit, [u], [v], [angle])
    assert abs(float(err.mean_defocus_error_percent[0])) < 0.3
    assert abs(float(err.astigmatism_error_A[0])) < 80
    assert float(err.angle_error_deg[0]) < 2.0
    assert float(fit.defocus_u_A[0]) >= float(fit.defocus_v_A[0])
    assert 0.0 <= float(fit.defocus_angle_deg[0]) < 180.0
    assert float(fit.fit_score[0]) > 0.5
    # the swapped form (V along the angle) reads back as the same CTF: U = max, angle + 90
    if u < v:
        assert float(fit.defocus_u_A[0]) == pytest.approx(v, abs=60)
        swapped = angle_difference_mod180_deg(fit.defocus_angle_deg[0], torch.tensor(angle + 90.0))
        assert float(swapped) < 2.0


def test_phase_shift_is_fitted() -> None:
    image = ctf_on_noise((1024, 1024), 8200.0, 7800.0, 50.0, phase_shift_deg=70.0, seed=3)
    settings = ce.CtfSearchSettings(
        tile_size_px=256, tile_overlap=0.5, max_resolution_A=4.0, fit_phase_shift=True
    )
    fit, _ = ce.estimate_ctf(image, OPTICS, settings)
    assert float(fit.phase_shift_deg[0]) == pytest.approx(70.0, abs=5.0)
    assert float(errors(fit, [8200.0], [7800.0], [50.0]).mean_defocus_error_percent[0]) == (
        pytest.approx(0.0, abs=1.0)
    )


def test_fit_resolution_follows_the_visible_rings() -> None:
    """Rings damped by a B-factor envelope are fitted to a lower resolution."""
    settings = ce.CtfSearchSettings(tile_size_px=256, tile_overlap=0.5, max_resolution_A=4.0)
    images = torch.stack(
        [
            ctf_on_noise((1024, 1024), 12000.0, 11600.0, 20.0, noise=0.3, seed=4),
            ctf_on_noise((1024, 1024), 12000.0, 11600.0, 20.0, bfactor_A2=400.0, noise=0.3, seed=4),
        ]
    )
    fit, _ = ce.estimate_ctf(images, OPTICS, settings)
    sharp, damped = (float(r) for r in fit.fit_resolution_A)
    assert sharp < 3.5  # rings to near Nyquist (2.5 Å)
    assert damped > sharp + 1.0
    assert 4.0 < damped < 12.0
    # both items of the batch are fitted independently and correctly
    err = errors(fit, [12000.0] * 2, [11600.0] * 2, [20.0] * 2)
    assert bool((err.mean_defocus_error_percent.abs() < 0.5).all())


def test_empty_micrograph_is_a_clear_error() -> None:
    images = torch.stack([ctf_on_noise((512, 512), 10000.0, 10000.0, 0.0), torch.zeros(512, 512)])
    with pytest.raises(ce.EmptyMicrographError, match="micrograph 1 is empty"):
        ce.estimate_ctf(images, OPTICS, ce.CtfSearchSettings(tile_size_px=256))
    with pytest.raises(ce.EmptyMicrographError, match="every pixel is 3"):
        ce.estimate_ctf(torch.full((512, 512), 3.0), OPTICS)
    nan = torch.randn(512, 512)
    nan[5, 5] = math.nan
    with pytest.raises(ce.EmptyMicrographError, match="NaN"):
        ce.estimate_ctf(nan, OPTICS)


def test_invalid_band_is_rejected() -> None:
    with pytest.raises(ValueError, match="must be larger than max_resolution_A"):
        ce.fit_band_invA(ce.CtfSearchSettings(min_resolution_A=5.0, max_resolution_A=8.0), 1.0)


def test_diagnostic_image_shows_matching_rings() -> None:
    """Left half = data, right half = model: point-symmetric pixels agree for a good fit."""
    image = ctf_on_noise((1024, 1024), 14000.0, 13000.0, 60.0, noise=0.2, seed=5)
    settings = ce.CtfSearchSettings(tile_size_px=256, tile_overlap=0.5)
    fit, amplitude = ce.estimate_ctf(image, OPTICS, settings)
    picture = ce.diagnostic_image(amplitude, fit, OPTICS, settings)
    assert picture.shape == (1, 256, 256)
    assert float(picture.min()) >= 0.0 and float(picture.max()) <= 1.0
    half = 128
    left = picture[0, 1:, 1:half]
    right = torch.flip(picture[0, 1:, half + 1 :], dims=(0, 1))  # the same frequencies
    r = torch.corrcoef(torch.stack([left.reshape(-1), right.reshape(-1)]))[0, 1]
    assert float(r) > 0.5


# --------------------------------------------------------------------------------------------
# simulated micrographs (particles, CTF, noise at the simulator's default SNR 0.05)


def atom_volume(n: int = 80, n_atoms: int = 3000, radius_A: float = 38.0) -> torch.Tensor:
    """A protein-like map: random 'atoms' (Gaussians, sigma 1 Å) in a sphere."""
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(n_atoms, 3, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True)
    radius = torch.rand(n_atoms, 1, generator=g, dtype=torch.float64) ** (1 / 3) * radius_A
    index = (direction * radius / PIXEL_A + n // 2).round().long()
    volume = torch.zeros(n, n, n, dtype=torch.float64)
    ones = torch.ones(n_atoms, dtype=torch.float64)
    volume.index_put_((index[:, 2], index[:, 1], index[:, 0]), ones, accumulate=True)
    k = torch.fft.fftfreq(n, d=PIXEL_A, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k[: n // 2 + 1].abs(), indexing="ij")
    blur = torch.exp(-2 * math.pi**2 * (kx**2 + ky**2 + kz**2))
    return torch.fft.irfftn(torch.fft.rfftn(volume) * blur, s=(n, n, n)).float()


@pytest.fixture(scope="module")
def particle_canvas() -> tuple[torch.Tensor, torch.Tensor]:
    """Negated projections (protein dark) of 400 random poses pasted on a 2048 px canvas, and
    the particle centres (the first stages of ``simulate_micrograph``, shared by the tests)."""
    volume = atom_volume()
    g = torch.Generator().manual_seed(1)
    shape = (2048, 2048)
    positions = random_positions(400, shape, 60.0, 41.0, g)
    projections = project_volume(volume, random_rotations(400, g))
    return paste_images(-projections, positions, shape), positions


def simulated_micrograph(
    canvas: tuple[torch.Tensor, torch.Tensor], u: float, v: float, angle: float, seed: int
) -> torch.Tensor:
    """CTF and white noise at SNR 0.05 over the particle boxes (as ``simulate_micrograph``)."""
    image, positions = canvas
    ctf = ctf_2d(
        u, v, angle, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1,
        pixel_size_A=PIXEL_A, shape=tuple(image.shape),
    )  # fmt: skip
    clean = apply_ctf(image, ctf)
    signal_std = float(extract_boxes(clean, positions, 80).var(dim=(-2, -1)).mean().sqrt())
    g = torch.Generator().manual_seed(seed)
    return add_gaussian_noise(clean, signal_std / math.sqrt(0.05), g)


# mean defocus 0.5-4 µm, astigmatism up to 1000 Å
CASES = [
    (5000.0, 700.0, 160.0),
    (10000.0, 400.0, 40.0),
    (15000.0, 1000.0, 95.0),
    (22000.0, 300.0, 10.0),
    (30000.0, 150.0, 130.0),
    (40000.0, 800.0, 70.0),
]


def test_accuracy_on_simulated_micrographs(
    particle_canvas: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Median mean-defocus error <= 1 %; angle error <= 5° where the astigmatism is >= 300 Å."""
    images = torch.stack(
        [
            simulated_micrograph(particle_canvas, m + a / 2, m - a / 2, t, seed=i)
            for i, (m, a, t) in enumerate(CASES)
        ]
    )
    settings = ce.CtfSearchSettings(tile_size_px=512, tile_overlap=0.5)
    fit, _ = ce.estimate_ctf(images, OPTICS, settings)
    err = errors(
        fit,
        [m + a / 2 for m, a, _ in CASES],
        [m - a / 2 for m, a, _ in CASES],
        [t for _, _, t in CASES],
    )
    assert float(err.mean_defocus_error_percent.abs().median()) <= 1.0
    assert float(err.mean_defocus_error_percent.abs().max()) <= 2.0
    astigmatic = torch.tensor([a >= 300 for _, a, _ in CASES])
    assert float(err.angle_error_deg[astigmatic].median()) <= 5.0
    assert bool((fit.fit_score > 0.1).all())
    assert bool((fit.fit_resolution_A < 12.0).all())
