"""Particle extraction: centring, edge dropping, binning, inversion, normalisation, phase flip,
and the round trip simulated micrographs -> particles -> reconstruction (cryostack and RELION)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from cryostack.core.datamodel import ItemSet, OpticsGroup, SetKind
from cryostack.em.ctf import ctf_2d
from cryostack.em.extraction import (
    binned_pixel_size_A,
    extract_boxes,
    prepare_particles,
)
from cryostack.em.fourier import fourier_crop
from cryostack.em.reconstruction import Backprojector
from cryostack.em.rotations import euler_to_matrix
from cryostack.em.scoring import map_vs_truth
from cryostack.em.simulate import apply_ctf, simulate_micrograph
from cryostack.io.atomic_model import model_to_map, shipped_model_path
from cryostack.io.mrc import read_mrc, write_mrc_stack
from cryostack.io.star import write_star
from helpers import require_program

PIXEL_A = 6.0
BOX = 32


def test_boxes_are_centred_on_rounded_positions_and_edges_dropped() -> None:
    image = torch.zeros(100, 120)
    image[40, 30] = 1.0  # x = 30, y = 40
    image[70, 90] = 2.0
    positions = torch.tensor([[30.3, 39.6], [89.5001, 70.4], [5.0, 50.0], [114.0, 50.0]])
    boxes = extract_boxes(image, positions, 16)
    assert boxes.kept.tolist() == [True, True, False, False]
    assert boxes.n_dropped == 2
    assert boxes.centres_px.tolist() == [[30, 40], [90, 70]]
    assert float(boxes.boxes[0, 8, 8]) == 1.0 and float(boxes.boxes[0].sum()) == 1.0
    assert float(boxes.boxes[1, 8, 8]) == 2.0
    # a box touching the border exactly fits: first pixel 0, last pixel W - 1
    edge = extract_boxes(image, torch.tensor([[8.0, 8.0], [112.0, 92.0], [7.0, 8.0]]), 16)
    assert edge.kept.tolist() == [True, True, False]


def test_prepare_particles_inverts_normalises_and_bins() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = 3.0 + 2.0 * torch.randn(5, 64, 64, generator=g)
    boxes[:, 28:36, 28:36] -= 10.0  # a dark particle
    images = prepare_particles(boxes, background_radius_px=20.0)
    y, x = torch.meshgrid(torch.arange(64) - 32, torch.arange(64) - 32, indexing="ij")
    outside = x**2 + y**2 > 20.0**2
    assert torch.allclose(images[:, outside].mean(-1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(images[:, outside].std(-1, correction=0), torch.ones(5), atol=1e-5)
    assert bool((images[:, 32, 32] > 3.0).all())  # inverted: the particle is white
    kept = prepare_particles(boxes, invert_contrast=False, normalise=False)
    assert torch.equal(kept, boxes)
    binned = prepare_particles(boxes, rescaled_size_px=32, invert_contrast=False, normalise=False)
    assert binned.shape == (5, 32, 32)
    assert torch.allclose(binned, fourier_crop(boxes, 32))
    assert binned_pixel_size_A(1.5, 64, 32) == 3.0 and binned_pixel_size_A(1.5, 64, None) == 1.5
    with pytest.raises(ValueError, match="exceeds"):
        prepare_particles(boxes, rescaled_size_px=80)


def test_phase_flip_makes_the_transfer_positive() -> None:
    g = torch.Generator().manual_seed(1)
    signal = torch.randn(4, 48, 48, generator=g)
    ctf = ctf_2d(
        15000.0,  # no astigmatism: the CTF is exactly Hermitian on the rfft grid
        15000.0,
        0.0,
        voltage_kV=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        pixel_size_A=2.0,
        shape=(48, 48),
    )
    flipped = prepare_particles(
        apply_ctf(signal, ctf), invert_contrast=False, normalise=False, ctf=ctf
    )
    expected = apply_ctf(signal, ctf.abs())
    assert torch.allclose(flipped, expected, atol=1e-4)


@dataclass
class Extracted:
    volume: torch.Tensor
    star: Path
    images: torch.Tensor
    rotations: torch.Tensor
    ctf: torch.Tensor
    shifts_px: torch.Tensor


@pytest.fixture(scope="module")
def particles(tmp_path_factory: pytest.TempPathFactory) -> Extracted:
    """Particles extracted from four simulated micrographs, with their true poses and CTF."""
    volume = torch.from_numpy(
        model_to_map(shipped_model_path("trpv1"), pixel_size_A=PIXEL_A, box_size_px=BOX)
    )
    folder = tmp_path_factory.mktemp("extract")
    rows: dict[str, list[Any]] = {k: [] for k in _COLUMNS}
    images, rotations, ctfs = [], [], []
    for i in range(4):
        g = torch.Generator().manual_seed(10 + i)
        defocus = 12000.0 + 3000.0 * i
        micrograph, truth = simulate_micrograph(
            volume,
            80,
            (448, 448),
            pixel_size_A=PIXEL_A,
            defocus_u_A=defocus + 300,
            defocus_v_A=defocus - 300,
            defocus_angle_deg=15.0 * i,
            snr=0.3,
            ice_gradient=1.0,
            generator=g,
        )
        boxes = extract_boxes(micrograph, truth.positions_px, BOX)
        stack = prepare_particles(boxes.boxes)
        path = folder / f"mic{i}.mrcs"
        write_mrc_stack(path, [stack.numpy()], PIXEL_A)
        kept = boxes.kept
        centres = boxes.centres_px.to(torch.float64)
        origins = (centres - truth.positions_px[kept].to(torch.float64)) * PIXEL_A
        n = int(kept.sum())
        rows["image_path"] += [str(path)] * n
        rows["image_index"] += list(range(n))
        rows["micrograph_name"] += [f"mic{i}"] * n
        rows["coord_x_px"] += centres[:, 0].tolist()
        rows["coord_y_px"] += centres[:, 1].tolist()
        rows["optics_group"] += [1] * n
        rows["defocus_u_A"] += [defocus + 300] * n
        rows["defocus_v_A"] += [defocus - 300] * n
        rows["defocus_angle_deg"] += [15.0 * i] * n
        euler = truth.euler_deg[kept].to(torch.float64)
        rows["rot_deg"] += euler[:, 0].tolist()
        rows["tilt_deg"] += euler[:, 1].tolist()
        rows["psi_deg"] += euler[:, 2].tolist()
        rows["origin_x_A"] += origins[:, 0].tolist()
        rows["origin_y_A"] += origins[:, 1].tolist()
        images.append(stack)
        rotations.append(euler_to_matrix(euler).float())
        ctfs.append(
            ctf_2d(
                defocus + 300,
                defocus - 300,
                15.0 * i,
                voltage_kV=300.0,
                cs_mm=2.7,
                amplitude_contrast=0.1,
                pixel_size_A=PIXEL_A,
                shape=(BOX, BOX),
            ).expand(n, -1, -1)
        )
    table = pa.table({k: pa.array(v, _COLUMNS[k]) for k, v in rows.items()})
    optics = OpticsGroup(pixel_size_A=PIXEL_A, micrograph_pixel_size_A=PIXEL_A, image_size_px=BOX)
    star = folder / "particles.star"
    write_star(ItemSet(SetKind.PARTICLES, table, [optics]), star)
    origins_A = torch.tensor(np.stack([rows["origin_x_A"], rows["origin_y_A"]], -1))
    return Extracted(
        volume=volume,
        star=star,
        images=torch.cat(images),
        rotations=torch.cat(rotations),
        ctf=torch.cat(ctfs),
        shifts_px=-origins_A.float() / PIXEL_A,
    )


_COLUMNS = {
    "image_path": pa.string(),
    "image_index": pa.int64(),
    "micrograph_name": pa.string(),
    "coord_x_px": pa.float64(),
    "coord_y_px": pa.float64(),
    "optics_group": pa.int32(),
    "defocus_u_A": pa.float64(),
    "defocus_v_A": pa.float64(),
    "defocus_angle_deg": pa.float64(),
    "rot_deg": pa.float64(),
    "tilt_deg": pa.float64(),
    "psi_deg": pa.float64(),
    "origin_x_A": pa.float64(),
    "origin_y_A": pa.float64(),
}


def low_resolution_fsc(volume: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean FSC against the truth over shells 2..5 (about 96 to 38 Å at 6 Å/px, box 32)."""
    return float(map_vs_truth(volume, truth, PIXEL_A).fsc[2:6].mean())


def test_extracted_particles_reconstruct_the_map(particles: Extracted) -> None:
    p = particles
    assert p.images.shape[0] >= 250
    bp = Backprojector(BOX)
    bp.add(p.images, p.rotations, ctf=p.ctf, shifts_px=p.shifts_px)
    volume = bp.reconstruct(wiener_constant=float(p.images.shape[0]) * 0.05)
    assert low_resolution_fsc(volume, p.volume) > 0.9
    # the wrong contrast gives an anti-correlated map: the inversion matters
    wrong = Backprojector(BOX)
    wrong.add(-p.images, p.rotations, ctf=p.ctf, shifts_px=p.shifts_px)
    assert low_resolution_fsc(wrong.reconstruct(), p.volume) < -0.5


def test_relion_reconstructs_the_exported_particles(particles: Extracted, tmp_path: Path) -> None:
    program = require_program("relion_reconstruct")
    out = tmp_path / "relion.mrc"
    subprocess.run(
        [program, "--i", particles.star.name, "--o", str(out), "--ctf"],
        cwd=particles.star.parent,
        check=True,
        capture_output=True,
        timeout=300,
    )
    volume, _ = read_mrc(out)
    assert low_resolution_fsc(torch.from_numpy(volume.copy()), particles.volume) > 0.9
