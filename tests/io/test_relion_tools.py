"""What cryostack exports, RELION 3.1 reads: our particles STAR + MRC stack through RELION tools."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cryostack.core.datamodel import ItemSet, OpticsGroup, SetKind
from cryostack.io.mrc import MrcStackWriter
from cryostack.io.star import read_star, write_star
from helpers import require_program

N, BOX, PIXEL_A = 6, 32, 1.5


def _particles(tmp_path: Path) -> tuple[ItemSet, np.ndarray]:
    """Six particles in two optics groups, images written in two chunks by the stack writer."""
    rng = np.random.default_rng(7)
    scale = np.arange(1, N + 1, dtype=np.float32)[:, None, None]
    images = (rng.normal(size=(N, BOX, BOX)) * scale + scale).astype(np.float32)
    stack = tmp_path / "Extract" / "ours.mrcs"
    with MrcStackWriter(stack, (BOX, BOX), PIXEL_A) as out:
        out.write(images[:4])
        out.write(images[4:])
    table = pa.table(
        {
            "image_path": [str(stack)] * N,
            "image_index": pa.array(range(N), pa.int64()),
            "optics_group": pa.array([1, 1, 1, 2, 2, 2], pa.int32()),
            "micrograph_name": ["MotionCorr/mic1.mrc"] * N,
            "coord_x_px": np.arange(N) * 100.0,
            "coord_y_px": np.arange(N) * 50.0 + 0.25,
            "defocus_u_A": np.linspace(10000.0, 15000.0, N),
            "defocus_v_A": np.linspace(9500.0, 14500.0, N),
            "defocus_angle_deg": np.full(N, 31.5),
            "rot_deg": np.linspace(-170.0, 170.0, N),
            "tilt_deg": np.linspace(10.0, 170.0, N),
            "psi_deg": np.linspace(-90.0, 90.0, N),
            "origin_x_A": np.linspace(-3.0, 3.0, N),
            "origin_y_A": np.linspace(2.0, -2.0, N),
            "random_subset": pa.array([1, 2] * 3, pa.int32()),
        }
    )
    optics = [
        OpticsGroup(optics_group=1, pixel_size_A=PIXEL_A, image_size_px=BOX),
        OpticsGroup(
            optics_group=2, name="g200", voltage_kV=200, pixel_size_A=PIXEL_A, image_size_px=BOX
        ),
    ]
    return ItemSet(SetKind.PARTICLES, table, optics), images


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output.upper(), output
    return output


@pytest.mark.relion
def test_relion_star_handler_reads_our_star(tmp_path: Path) -> None:
    handler = require_program("relion_star_handler")
    particles, _ = _particles(tmp_path)
    write_star(particles, tmp_path / "ours.star")
    _run(
        [
            handler,
            "--i",
            "ours.star",
            "--o",
            "check.star",
            "--operate",
            "rlnDefocusU",
            "--multiply_by",
            "2",
        ],
        cwd=tmp_path,
    )
    check = read_star(tmp_path / "check.star")
    assert len(check) == N
    assert check.optics == particles.optics
    np.testing.assert_allclose(
        check.table.column("defocus_u_A").to_numpy(),
        2 * particles.table.column("defocus_u_A").to_numpy(),
    )
    for name in (
        "defocus_v_A",
        "rot_deg",
        "tilt_deg",
        "psi_deg",
        "origin_x_A",
        "origin_y_A",
        "coord_y_px",
    ):
        np.testing.assert_allclose(  # RELION writes 6 decimals
            check.table.column(name).to_numpy(), particles.table.column(name).to_numpy(), atol=1e-5
        )
    for name in ("image_path", "image_index", "optics_group", "random_subset", "micrograph_name"):
        assert check.table.column(name).equals(particles.table.column(name)), name


@pytest.mark.relion
def test_relion_reads_the_images_our_star_points_at(tmp_path: Path) -> None:
    handler = require_program("relion_star_handler")
    particles, _ = _particles(tmp_path)
    write_star(particles, tmp_path / "ours.star")
    output = _run(
        [handler, "--i", "ours.star", "--o", "kept.star", "--discard_on_stats"], cwd=tmp_path
    )
    assert "Discarded 0 Images" in output
    assert len(read_star(tmp_path / "kept.star")) == N


@pytest.mark.relion
def test_relion_image_handler_stats_match_ours(tmp_path: Path) -> None:
    image_handler = require_program("relion_image_handler")
    _, images = _particles(tmp_path)
    output = _run([image_handler, "--i", "Extract/ours.mrcs", "--stats"], cwd=tmp_path)
    pattern = re.compile(
        r"(\d+)@\S+ : \(x,y,z,n\)= (\d+) x (\d+) x 1 x 1 ; avg= (\S+) stddev= (\S+) "
        r"minval= (\S+) maxval= (\S+); angpix = (\S+)"
    )
    rows = pattern.findall(output)
    assert len(rows) == N, output
    for number, nx, ny, avg, std, lo, hi, angpix in rows:
        image = images[int(number) - 1]
        assert (int(nx), int(ny), float(angpix)) == (BOX, BOX, PIXEL_A)
        assert float(avg) == pytest.approx(float(image.mean()), rel=1e-4, abs=1e-4)
        assert float(std) == pytest.approx(float(image.std()), rel=1e-3)
        assert (float(lo), float(hi)) == pytest.approx(
            (float(image.min()), float(image.max())), rel=1e-4
        )
