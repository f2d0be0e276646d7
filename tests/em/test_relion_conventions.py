"""Prove cryostack's projection / shift / CTF / reconstruction conventions against RELION 3.1.

Findings (recorded here because they fix the conventions): with ``A = euler_to_matrix(rot, tilt,
psi)`` the projection is the central slice ``F3D(Aᵀ k)`` (no transpose needed), the CTF sign is
RELION's (``CTF(0) = +Q0``), intensities agree to 1e-4 (same line-integral scale), and
``relion_project`` moves a particle with origin offset ``o`` (Å) by ``-o / pixel_size`` pixels.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryostack.em.ctf import ctf_2d
from cryostack.em.fourier import irfft2_centred, phase_shift_2d, rfft2_centred
from cryostack.em.fsc import fsc
from cryostack.em.projection import project_volume
from cryostack.em.reconstruction import Backprojector, relion_origin_to_shift_px
from cryostack.em.rotations import euler_to_matrix, matrix_to_euler, random_rotations
from helpers import require_program

pytestmark = pytest.mark.relion

PIXEL_SIZE_A = 2.0


def blob_map(n: int) -> np.ndarray:
    """An asymmetric sum of anisotropic Gaussians (x, y, z centres and widths in px)."""
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    scale = n / 64
    vol = np.zeros((n, n, n), np.float32)
    blobs = [
        ((8, -5, 3), (3.0, 2.0, 4.0), 1.0),
        ((-6, 7, -4), (2.0, 4.0, 2.5), 0.8),
        ((2, 2, 10), (5.0, 2.0, 2.0), 0.6),
        ((-10, -8, 0), (1.5, 1.5, 1.5), 0.9),
        ((0, 0, 0), (1.2, 1.2, 1.2), 0.7),
    ]
    for (px, py, pz), (sx, sy, sz), amp in blobs:
        px, py, pz = px * scale, py * scale, pz * scale
        sx, sy, sz = max(sx * scale, 1.0), max(sy * scale, 1.0), max(sz * scale, 1.0)
        r2 = (x - px) ** 2 / sx**2 + (y - py) ** 2 / sy**2 + (z - pz) ** 2 / sz**2
        vol += amp * np.exp(-0.5 * r2)
    return vol


def write_map(path: Path, vol: np.ndarray) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(vol.astype(np.float32))
        mrc.voxel_size = PIXEL_SIZE_A


def optics_table(box: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [PIXEL_SIZE_A],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )


def particles_table(
    angles: np.ndarray, rng: np.random.Generator, stack: str, max_origin_A: float = 8.0
) -> pd.DataFrame:
    n = len(angles)
    defocus_u = rng.uniform(8000, 25000, n)
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnOriginXAngst": rng.uniform(-max_origin_A, max_origin_A, n),
            "rlnOriginYAngst": rng.uniform(-max_origin_A, max_origin_A, n),
            "rlnDefocusU": defocus_u,
            "rlnDefocusV": defocus_u - rng.uniform(0, 2000, n),
            "rlnDefocusAngle": rng.uniform(-90, 90, n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )


def simulate(vol: torch.Tensor, parts: pd.DataFrame, with_ctf: bool) -> torch.Tensor:
    """cryostack's version of relion_project for the poses/shifts/CTFs of a particles table."""
    n = vol.shape[0]
    angles = torch.tensor(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    origins = torch.tensor(parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy())
    rotations = euler_to_matrix(angles.float())
    images_ft = rfft2_centred(project_volume(vol, rotations))
    images_ft = phase_shift_2d(
        images_ft, relion_origin_to_shift_px(origins.float(), PIXEL_SIZE_A), (n, n)
    )
    if with_ctf:
        images_ft = images_ft * particle_ctfs(parts, n)
    return irfft2_centred(images_ft, (n, n))


def particle_ctfs(parts: pd.DataFrame, n: int) -> torch.Tensor:
    return ctf_2d(
        torch.tensor(parts["rlnDefocusU"].to_numpy(), dtype=torch.float32),
        torch.tensor(parts["rlnDefocusV"].to_numpy(), dtype=torch.float32),
        torch.tensor(parts["rlnDefocusAngle"].to_numpy(), dtype=torch.float32),
        voltage_kV=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        pixel_size_A=PIXEL_SIZE_A,
        shape=(n, n),
    )


def pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).numpy()


def run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"{args[0]} failed: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    )


@pytest.mark.parametrize("with_ctf", [False, True])
def test_projections_match_relion_project(tmp_path: Path, with_ctf: bool) -> None:
    require_program("relion_project")
    box = 64
    rng = np.random.default_rng(0)
    vol = blob_map(box)
    write_map(tmp_path / "map.mrc", vol)
    angles = np.stack(
        [rng.uniform(-180, 180, 10), rng.uniform(0, 180, 10), rng.uniform(-180, 180, 10)], 1
    )
    parts = particles_table(angles, rng, "dummy.mrcs")
    starfile.write({"optics": optics_table(box), "particles": parts}, tmp_path / "particles.star")
    args = ["relion_project", "--i", "map.mrc", "--ang", "particles.star", "--o", "proj"]
    run([*args, "--ctf"] if with_ctf else args, tmp_path)
    relion = torch.from_numpy(mrcfile.read(tmp_path / "proj.mrcs").astype(np.float32))

    ours = simulate(torch.from_numpy(vol), parts, with_ctf)
    correlations = pearson(ours, relion)
    assert correlations.min() >= 0.9999, correlations
    # same intensity scale (line integrals in voxel units)
    ratio = (ours.norm(dim=(1, 2)) / relion.norm(dim=(1, 2))).numpy()
    np.testing.assert_allclose(ratio, 1.0, atol=0.01)
    # the opposite shift sign would be clearly worse: the test can tell conventions apart
    flipped = parts.assign(
        rlnOriginXAngst=-parts["rlnOriginXAngst"], rlnOriginYAngst=-parts["rlnOriginYAngst"]
    )
    assert pearson(simulate(torch.from_numpy(vol), flipped, with_ctf), relion).mean() < 0.9


def write_stack(path: Path, images: torch.Tensor) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(images.numpy().astype(np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = PIXEL_SIZE_A


def test_relion_reconstructs_cryostack_particles_and_vice_versa(tmp_path: Path) -> None:
    require_program("relion_reconstruct")
    require_program("relion_project")
    box, n_particles = 32, 800
    rng = np.random.default_rng(1)
    vol = blob_map(box)
    vol_t = torch.from_numpy(vol)
    rotations = random_rotations(n_particles, generator=torch.Generator().manual_seed(2))
    angles = matrix_to_euler(rotations).numpy()
    parts = particles_table(angles, rng, "particles.mrcs", max_origin_A=4.0)
    starfile.write({"optics": optics_table(box), "particles": parts}, tmp_path / "particles.star")

    # cryostack simulates, RELION reconstructs
    write_stack(tmp_path / "particles.mrcs", simulate(vol_t, parts, with_ctf=True))
    run(["relion_reconstruct", "--i", "particles.star", "--o", "rec.mrc", "--ctf"], tmp_path)
    relion_rec = torch.from_numpy(mrcfile.read(tmp_path / "rec.mrc").astype(np.float32))
    fsc_relion = fsc(relion_rec, vol_t)

    # RELION simulates, cryostack reconstructs
    write_map(tmp_path / "map.mrc", vol)
    run(
        ["relion_project", "--i", "map.mrc", "--ang", "particles.star", "--o", "rp", "--ctf"],
        tmp_path,
    )
    relion_images = torch.from_numpy(mrcfile.read(tmp_path / "rp.mrcs").astype(np.float32))
    origins = torch.tensor(parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).float()
    bp = Backprojector(box)
    bp.add(
        relion_images,
        euler_to_matrix(torch.from_numpy(angles).float()),
        ctf=particle_ctfs(parts, box),
        shifts_px=relion_origin_to_shift_px(origins, PIXEL_SIZE_A),
    )
    ours = bp.reconstruct()
    fsc_ours = fsc(ours, vol_t)

    # measured: both >= 0.99 up to one shell below Nyquist, >= 0.95 at Nyquist
    below_nyquist = slice(1, box // 2)
    assert fsc_relion[below_nyquist].min() > 0.98, fsc_relion
    assert fsc_ours[below_nyquist].min() > 0.98, fsc_ours
    assert fsc_relion[-1] > 0.9 and fsc_ours[-1] > 0.9
    assert pearson(relion_rec[None], vol_t[None])[0] > 0.99
    assert pearson(ours[None], vol_t[None])[0] > 0.99
