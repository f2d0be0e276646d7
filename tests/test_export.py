"""Exports for other programs: RELION STAR (read back by RELION itself), cryoSPARC .cs, MRC."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cryostack import api
from cryostack.cli.exporting import ExportError, export_output
from cryostack.cli.main import app
from cryostack.core.project import FINISHED, Project
from cryostack.execution.launch import launch, wait_for
from cryostack.io.cryosparc import read_cs
from cryostack.io.errors import FormatWarning
from cryostack.io.mrc import read_mrc
from cryostack.io.star import read_star
from helpers import TEST_DATA, require_program

RELION31_STAR = TEST_DATA / "cryodrgn" / "relion31.star"
RELION31_STACK = TEST_DATA / "cryodrgn" / "relion31.mrcs"
MAP = TEST_DATA / "emdb" / "emd_1832.map"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, int, int]]:
    """A project with particles (stacks copied into it) and a map, imported concurrently."""
    project = Project.create(tmp_path_factory.mktemp("export") / "project")
    particles = project.create_run(
        "import-particles", {"file": str(RELION31_STAR), "copy_stacks": True}, seed=1
    )
    volume = project.create_run("import-volume", {"file": str(MAP)}, seed=1)
    for run_id in (particles, volume):
        launch(project, run_id, workers=1)
    for run_id in (particles, volume):
        assert wait_for(project, run_id, poll_s=0.2, timeout_s=120) == FINISHED
    yield project, particles, volume
    project.close()


def test_star_export_reads_back_the_same_numbers(
    imported: tuple[Project, int, int], tmp_path: Path
) -> None:
    project, particles, _ = imported
    written = export_output(project, f"{particles}.particles", tmp_path / "p.star", "star")
    assert written == tmp_path / "p.star"
    back = read_star(written)
    original = read_star(RELION31_STAR)
    for column in ("defocus_u_A", "defocus_v_A", "rot_deg", "tilt_deg", "psi_deg", "origin_x_A"):
        np.testing.assert_array_equal(
            back.table.column(column).to_numpy(), original.table.column(column).to_numpy()
        )
    assert back.optics[0].pixel_size_A == 2.806 and back.optics[0].image_size_px == 256
    assert back.table.column("image_index").to_pylist() == [0, 1, 2, 3, 4]
    (stack,) = set(back.table.column("image_path").to_pylist())
    assert Path(stack).read_bytes() == RELION31_STACK.read_bytes()  # the project's copy


def test_star_paths_are_relative_to_the_star_folder(imported: tuple[Project, int, int]) -> None:
    project, particles, _ = imported
    star = export_output(project, str(particles), project.root, "star")
    assert star == project.root / f"run{particles}_particles.star"
    text = star.read_text()
    run_dir = project.run(particles).run_dir
    assert re.search(rf"^000001@{re.escape(run_dir)}/steps/\S+\.mrcs ", text, re.M)
    star.unlink()


def test_relion_reads_the_exported_images(imported: tuple[Project, int, int]) -> None:
    """relion_image_handler --stats, run in the STAR's folder, finds and reads our images."""
    handler = require_program("relion_image_handler")
    project, particles, _ = imported
    star = export_output(project, str(particles), project.root / "relion.star", "star")
    proc = subprocess.run(
        [handler, "--i", star.name, "--stats"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    stats = re.findall(r"avg= (\S+) stddev= (\S+)", proc.stdout)
    images = api.read_images(project, particles, range(5)).astype(np.float64)
    assert len(stats) == 5
    np.testing.assert_allclose(
        np.array(stats, dtype=float),
        np.stack([images.mean((1, 2)), images.std((1, 2))], 1),
        rtol=1e-4,
    )
    star.unlink()


def test_cs_export_round_trip(imported: tuple[Project, int, int], tmp_path: Path) -> None:
    project, particles, _ = imported
    written = export_output(project, str(particles), tmp_path / "p.cs", "cs")
    back = read_cs(written)
    original = read_star(RELION31_STAR)
    np.testing.assert_allclose(
        back.table.column("defocus_u_A").to_numpy(),
        original.table.column("defocus_u_A").to_numpy(),
        rtol=1e-6,
    )
    np.testing.assert_allclose(  # poses survive the axis-angle round trip
        back.table.column("tilt_deg").to_numpy(),
        original.table.column("tilt_deg").to_numpy(),
        atol=1e-3,
    )
    (stack,) = set(back.table.column("image_path").to_pylist())
    assert Path(stack).is_file()
    assert back.optics[0].pixel_size_A == pytest.approx(2.806)


def test_mrc_exports_of_particles_and_map(
    imported: tuple[Project, int, int], tmp_path: Path
) -> None:
    project, particles, volume = imported
    stack = export_output(project, str(particles), tmp_path / "p.mrcs", "mrc")
    images, info = read_mrc(stack)
    with pytest.warns(FormatWarning, match="dubious header"):  # a real, odd header
        expected, _ = read_mrc(RELION31_STACK)
    np.testing.assert_array_equal(images, expected)
    assert info.pixel_size_A == pytest.approx(2.806)
    copy = export_output(project, f"{volume}.volume", tmp_path, "mrc")
    assert copy == tmp_path / f"run{volume}_volume.mrc"
    data, info = read_mrc(copy)
    original, _ = read_mrc(MAP)
    np.testing.assert_array_equal(data, original)
    assert info.pixel_size_A == pytest.approx(5.7)


@pytest.mark.parametrize(
    ("which", "fmt", "message"),
    [
        ("volume", "star", "is a map: export it as mrc, not star"),
        ("volume", "cs", "is a map: export it as mrc, not cs"),
        ("particles", "pdf", "unknown export format 'pdf'"),
    ],
)
def test_unsupported_exports_are_clear(
    imported: tuple[Project, int, int], tmp_path: Path, which: str, fmt: str, message: str
) -> None:
    project, particles, volume = imported
    run_id = particles if which == "particles" else volume
    with pytest.raises(ExportError, match=re.escape(message)):
        export_output(project, str(run_id), tmp_path / "x", fmt)
    assert list(tmp_path.iterdir()) == []


def test_cli_export(imported: tuple[Project, int, int], tmp_path: Path) -> None:
    project, particles, volume = imported
    out = tmp_path / "cli.star"
    args = ["export", f"{particles}.particles", str(out), "-p", str(project.root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(read_star(out)) == 5
    args = ["export", str(volume), str(tmp_path / "v.star"), "-p", str(project.root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "export it as mrc" in result.stderr
