"""Tests for cryostack.em.ctf (RELION CTF convention)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryostack.em import ctf as ctfm
from cryostack.em.grids import fftfreq_grid_2d
from helpers import require_program

OPTICS = {"voltage_kV": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}


def _hand_ctf(s: float, df: float, *, kv: float, cs_mm: float, q0: float, b: float = 0.0) -> float:
    """Scalar RELION CTF written out for single frequencies."""
    volts = kv * 1e3
    lam = 12.2643247 / math.sqrt(volts * (1 + 0.978466e-6 * volts))
    gamma = (
        -math.pi * lam * df * s**2
        + math.pi / 2 * cs_mm * 1e7 * lam**3 * s**4
        - math.atan(q0 / math.sqrt(1 - q0**2))
    )
    return -math.sin(gamma) * math.exp(-b * s**2 / 4)


def test_electron_wavelength_known_values() -> None:
    assert abs(ctfm.electron_wavelength_A(300.0) - 0.019687) < 2e-6
    assert abs(ctfm.electron_wavelength_A(200.0) - 0.025079) < 2e-6
    assert abs(ctfm.electron_wavelength_A(100.0) - 0.037014) < 2e-6
    t = ctfm.electron_wavelength_A(torch.tensor([300.0, 200.0], dtype=torch.float64))
    assert isinstance(t, torch.Tensor)
    torch.testing.assert_close(
        t, torch.tensor([0.019687, 0.025079], dtype=torch.float64), atol=2e-6, rtol=0
    )


def test_ctf_zero_frequency_is_plus_q0() -> None:
    ctf = ctfm.ctf_2d(15000.0, 14000.0, 30.0, pixel_size_A=1.0, shape=(32, 32), **OPTICS)
    assert ctf.shape == (32, 17) and ctf.dtype == torch.float32
    assert abs(ctf[0, 0].item() - 0.1) < 1e-6
    # with a 90 degree phase plate CTF(0) = -sin(-pi/2 - asin(Q0)) = cos(asin Q0) = sqrt(1 - Q0^2)
    ctf = ctfm.ctf_2d(
        15000.0, 15000.0, 0.0, pixel_size_A=1.0, shape=(8, 8), phase_shift_deg=90.0, **OPTICS
    )
    assert abs(ctf[0, 0].item() - math.sqrt(1 - 0.01)) < 1e-6


def test_ctf_matches_hand_values_on_grid() -> None:
    n, px = 64, 1.2
    df_u, df_v = 18000.0, 18000.0
    ctf = ctfm.ctf_2d(
        df_u,
        df_v,
        0.0,
        pixel_size_A=px,
        shape=(n, n),
        bfactor_A2=50.0,
        dtype=torch.float64,
        **OPTICS,
    )
    for row, col in [(0, 5), (7, 0), (3, 4), (n - 6, 8), (20, 32)]:
        ky = (row if row < n // 2 else row - n) / (n * px)
        kx = col / (n * px)
        s = math.hypot(kx, ky)
        expected = _hand_ctf(s, df_u, kv=300.0, cs_mm=2.7, q0=0.1, b=50.0)
        assert abs(ctf[row, col].item() - expected) < 1e-10, (row, col)


def test_ctf_astigmatism_angle_direction() -> None:
    n, px = 64, 1.0
    df_u, df_v, angle = 20000.0, 15000.0, 45.0
    ctf = ctfm.ctf_2d(
        df_u, df_v, angle, pixel_size_A=px, shape=(n, n), rfft=False, dtype=torch.float64, **OPTICS
    )
    s = torch.tensor([math.hypot(5, 5) / n], dtype=torch.float64)
    along_u = ctfm.ctf_1d(s, df_u, **OPTICS)
    along_v = ctfm.ctf_1d(s, df_v, **OPTICS)
    # (kx, ky) = (5, 5)/n is at +45 degrees from x (ky = row frequency): defocus U there.
    assert abs(ctf[5, 5].item() - along_u.item()) < 1e-10
    # (kx, ky) = (5, -5)/n is at -45 degrees: perpendicular, defocus V.
    assert abs(ctf[n - 5, 5].item() - along_v.item()) < 1e-10
    assert abs(along_u.item() - along_v.item()) > 0.1


def test_ctf_rfft_is_half_of_full_and_centrosymmetric() -> None:
    kw = dict(pixel_size_A=1.5, phase_shift_deg=20.0, **OPTICS)
    full = ctfm.ctf_2d(21000.0, 19000.0, -30.0, shape=(40, 36), rfft=False, **kw)
    half = ctfm.ctf_2d(21000.0, 19000.0, -30.0, shape=(40, 36), rfft=True, **kw)
    assert full.shape == (40, 36) and half.shape == (40, 19)
    # identical except the Nyquist column, which is +1/2 in rfft order and -1/2 in full order
    torch.testing.assert_close(half[:, :18], full[:, :18])
    flipped = torch.roll(torch.flip(full, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    # CTF(-k) = CTF(k) away from the Nyquist row/column (which map onto themselves)
    keep = torch.ones(40, 36, dtype=torch.bool)
    keep[20, :] = False
    keep[:, 18] = False
    torch.testing.assert_close(full[keep], flipped[keep], atol=1e-4, rtol=0)


def test_ctf_batched_parameters_broadcast() -> None:
    df_u = torch.tensor([[10000.0], [20000.0]])  # (2, 1)
    angle = torch.tensor([0.0, 30.0, 60.0])  # (3,)
    ctf = ctfm.ctf_2d(df_u, df_u - 500, angle, pixel_size_A=1.0, shape=(16, 16), **OPTICS)
    assert ctf.shape == (2, 3, 16, 9)
    single = ctfm.ctf_2d(20000.0, 19500.0, 30.0, pixel_size_A=1.0, shape=(16, 16), **OPTICS)
    torch.testing.assert_close(ctf[1, 1], single)
    scaled = ctfm.ctf_2d(
        20000.0, 19500.0, 30.0, pixel_size_A=1.0, shape=(16, 16), scale=0.5, **OPTICS
    )
    torch.testing.assert_close(scaled, 0.5 * single)


def test_ctf_zeros() -> None:
    zeros = ctfm.ctf_zeros_invA(15000.0, n_zeros=5, **OPTICS)
    values = ctfm.ctf_1d(zeros, 15000.0, **OPTICS)
    assert values.abs().max() < 1e-9
    # sign alternates between zeros, positive before the first
    mids = torch.cat([zeros[:1] / 2, (zeros[1:] + zeros[:-1]) / 2])
    signs = torch.sign(ctfm.ctf_1d(mids, 15000.0, **OPTICS))
    torch.testing.assert_close(
        signs, torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    )
    # first zero for 1.5 um at 300 kV is near 1/(sqrt(lambda df)) ~ 1/17.2 A
    assert 1 / zeros[0].item() == pytest.approx(17.0, abs=0.6)


def test_phase_flip_and_wiener_filter() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(2, 32, 32, generator=gen)
    ctf = ctfm.ctf_2d(12000.0, 11000.0, 10.0, pixel_size_A=1.0, shape=(32, 32), **OPTICS)
    ft = torch.fft.rfft2(img)
    observed = ft * ctf
    flipped = ctfm.phase_flip(observed, ctf)
    torch.testing.assert_close(flipped, ft * ctf.abs())
    restored = ctfm.wiener_filter(observed, ctf, 1e-6)
    mask = ctf.abs() > 0.05
    torch.testing.assert_close(
        restored[..., mask], ft[..., mask], atol=1e-3 * ft.abs().max().item(), rtol=0
    )
    with pytest.raises(ValueError, match="must be > 0"):
        ctfm.wiener_filter(observed, ctf, 0.0)


_RELION_STAR = """
# version 30001

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
1 opticsGroup1 300.0 2.7 0.1 1.5 64 2

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
_rlnPhaseShift #10
_rlnCtfBfactor #11
_rlnOpticsGroup #12
1@dummy.mrcs 0 0 0 0 0 12000 8000 30 0 0 1
2@dummy.mrcs 0 0 0 0 0 15000 14000 -70 20 40 1
"""


@pytest.mark.relion
def test_ctf_matches_relion_project(tmp_path: Path) -> None:
    """relion_project of a central delta map gives an image whose FFT is RELION's CTF."""
    program = require_program("relion_project")
    n, px = 64, 1.5
    vol = np.zeros((n, n, n), np.float32)
    vol[n // 2, n // 2, n // 2] = 1.0
    with mrcfile.new(tmp_path / "delta.mrc") as m:
        m.set_data(vol)
        m.voxel_size = px
    (tmp_path / "p.star").write_text(_RELION_STAR)
    subprocess.run(
        [program, "--i", "delta.mrc", "--o", "proj", "--ctf", "--ang", "p.star", "--angpix", "1.5"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    images = torch.from_numpy(mrcfile.read(tmp_path / "proj.mrcs").astype(np.float64))
    relion_ctf = torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1))).real
    ours = ctfm.ctf_2d(
        torch.tensor([12000.0, 15000.0]),
        torch.tensor([8000.0, 14000.0]),
        torch.tensor([30.0, -70.0]),
        phase_shift_deg=torch.tensor([0.0, 20.0]),
        bfactor_A2=torch.tensor([0.0, 40.0]),
        pixel_size_A=px,
        shape=(n, n),
        dtype=torch.float64,
        **OPTICS,
    )
    radius = (fftfreq_grid_2d((n, n), dtype=torch.float64) * n).norm(dim=-1)
    inside = radius < n / 2  # relion_project fills only the Fourier sphere
    diff = (relion_ctf[:, inside] - ours[:, inside]).abs().max().item()
    assert diff < 1e-5


def test_cryosparc_and_relion_ctf_parameters_of_same_particles_agree() -> None:
    """EMPIAR-10076 particles: cryoSPARC df1/df2/df_angle_rad are RELION DefocusU/V/Angle."""
    folder = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "cryodrgn"
    if not (folder / "empiar_10076_7.cs").exists():
        pytest.skip(f"fixtures not present in {folder}")
    cs = np.load(folder / "empiar_10076_7.cs")
    star = starfile.read(folder / "empiar_10076_7.star")
    ctf_cs = ctfm.ctf_2d(
        torch.from_numpy(cs["ctf/df1_A"].astype(np.float64)),
        torch.from_numpy(cs["ctf/df2_A"].astype(np.float64)),
        torch.from_numpy(np.degrees(cs["ctf/df_angle_rad"]).astype(np.float64)),
        voltage_kV=float(cs["ctf/accel_kv"][0]),
        cs_mm=float(cs["ctf/cs_mm"][0]),
        amplitude_contrast=float(cs["ctf/amp_contrast"][0]),
        pixel_size_A=float(cs["blob/psize_A"][0]),
        shape=(64, 64),
    )
    ctf_star = ctfm.ctf_2d(
        torch.tensor(star["rlnDefocusU"].to_numpy()),
        torch.tensor(star["rlnDefocusV"].to_numpy()),
        torch.tensor(star["rlnDefocusAngle"].to_numpy()),
        voltage_kV=float(star["rlnVoltage"][0]),
        cs_mm=float(star["rlnSphericalAberration"][0]),
        amplitude_contrast=float(star["rlnAmplitudeContrast"][0]),
        pixel_size_A=float(star["rlnDetectorPixelSize"][0] / star["rlnMagnification"][0] * 1e4),
        shape=(64, 64),
    )
    assert ctf_cs.shape == (7, 64, 33)
    assert (ctf_cs - ctf_star).abs().max() < 1e-3
