"""Import protocols: end-to-end runs on real and small synthetic files, and bad input rejected
before any run is recorded (the project stays unchanged)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cryostack import api
from cryostack.cli.exporting import export_output
from cryostack.cli.main import app
from cryostack.core.datamodel import SetKind
from cryostack.core.project import FINISHED, Project, ValidationError
from cryostack.execution.launch import launch, wait_for
from cryostack.io.cryosparc import read_cs
from cryostack.io.mrc import read_mrc, write_mrc
from cryostack.io.star import read_star, write_star
from cryostack.io.tiff import write_tiff_movie
from helpers import TEST_DATA

RELION31_STAR = TEST_DATA / "cryodrgn" / "relion31.star"
TRPV1_STAR = TEST_DATA / "cryojax" / "trpv1_small_stack.star"
TRPV1_STACK = TEST_DATA / "cryojax" / "trpv1_small_stack.mrcs"
EMPIAR_CS = TEST_DATA / "cryodrgn" / "empiar_10076_7.cs"
EMDB_ANISOTROPIC = TEST_DATA / "emdb" / "EMD-3001.map"


Case = tuple[str, dict[str, Any], dict[str, Any]]  # protocol, params, what the test needs
Finished = dict[str, tuple[Project, int, dict[str, Any]]]


def prepare_movies(folder: Path) -> Case:
    rng = np.random.default_rng(0)
    write_mrc(folder / "m1.mrcs", movie(rng, 5), 0.83, stack=True)
    write_mrc(folder / "m2.mrcs", movie(rng, 7), 0.83, stack=True)
    write_tiff_movie(folder / "m3.tiff", movie(rng, 6).astype(np.uint8))
    write_mrc(folder / "gain.mrc", np.ones((24, 32), np.float32), 0.83)
    params = {
        "files": str(folder / "m*"),
        "gain_reference_path": str(folder / "gain.mrc"),
        "voltage_kV": 200,
        "cs_mm": 2.7,
        "amplitude_contrast": 0.07,
        "pixel_size_A": 0.83,  # the TIFF has no pixel size; the MRC headers agree
        "dose_per_frame_e_A2": 1.25,
        "optics_group_name": "krios",
    }
    return "import-movies", params, {}


def prepare_micrographs(folder: Path) -> Case:
    images = np.random.default_rng(3).normal(size=(2, 40, 36)).astype(np.float32)
    write_mrc(folder / "mic_001.mrc", images[0], 1.5)
    write_mrc(folder / "mic_002.mrc", images[1], 1.5)
    zero_pixel_size(folder / "mic_002.mrc")  # the given value is used for this one
    params = {"files": str(folder / "*.mrc"), "pixel_size_A": 1.5}
    return "import-micrographs", params, {"images": images}


def prepare_relion31(folder: Path) -> Case:
    return "import-particles", {"file": str(RELION31_STAR)}, {}


def prepare_cryosparc(folder: Path) -> Case:
    """The real EMPIAR-10076 .cs file; its 7-image stack (320 px) synthesised here."""
    reference = read_cs(EMPIAR_CS, root=folder)
    (stack_path,) = set(reference.table.column("image_path").to_pylist())
    images = np.random.default_rng(4).normal(size=(7, 320, 320)).astype(np.float32)
    write_mrc(stack_path, images, 1.31, stack=True)
    params = {"file": str(EMPIAR_CS), "root": str(folder)}
    return "import-particles", params, {"images": images, "reference": reference}


def prepare_trpv1(folder: Path) -> Case:
    """The cryojax STAR names its stack batch_0_restacked.mrc: found through ``root``."""
    (folder / "batch_0_restacked.mrc").symlink_to(TRPV1_STACK)
    return (
        "import-particles",
        {"file": str(TRPV1_STAR), "root": str(folder), "copy_stacks": True},
        {},
    )


def prepare_volume(folder: Path) -> Case:
    maps = np.random.default_rng(5).normal(size=(3, 16, 16, 16)).astype(np.float32)
    for name, m in zip(("map", "half1", "half2"), maps, strict=True):
        write_mrc(folder / f"{name}.mrc", m, 2.1)
    zero_pixel_size(folder / "map.mrc")  # no pixel size in the main map's header
    params = {
        "file": str(folder / "map.mrc"),
        "half_maps": [str(folder / "half1.mrc"), str(folder / "half2.mrc")],
        "pixel_size_A": 2.1,
    }
    return "import-volume", params, {"maps": maps}


CASES = {
    "movies": prepare_movies,
    "micrographs": prepare_micrographs,
    "relion31": prepare_relion31,
    "cryosparc": prepare_cryosparc,
    "trpv1": prepare_trpv1,
    "volume": prepare_volume,
}


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Finished]:
    """Every successful import case, run in one project at the same time (fewer idle waits)."""
    base = tmp_path_factory.mktemp("imports")
    project = Project.create(base / "project")
    created = {}
    for name, prepare in CASES.items():
        folder = base / name
        folder.mkdir()
        protocol, params, extra = prepare(folder)
        extra["folder"] = folder
        created[name] = (project.create_run(protocol, params, seed=1), extra)
    for run_id, _ in created.values():
        launch(project, run_id, workers=1)
    for run_id, _ in created.values():
        status = wait_for(project, run_id, poll_s=0.2, timeout_s=180)
        assert status == FINISHED, project.path(project.run(run_id).log_path).read_text()
    yield {name: (project, run_id, extra) for name, (run_id, extra) in created.items()}
    project.close()


def zero_pixel_size(path: Path) -> None:
    """Set an MRC header's cell size (hence its pixel size) to 0, as some writers leave it."""
    raw = bytearray(path.read_bytes())
    raw[40:52] = b"\0" * 12
    path.write_bytes(bytes(raw))


def rejected(project: Project, protocol: str, params: dict[str, Any]) -> str:
    """The validation message of a run that must be refused; checks nothing was recorded."""
    with pytest.raises(ValidationError) as info:
        project.create_run(protocol, params)
    assert project.runs() == []
    assert list((project.root / "runs").iterdir()) == []
    return str(info.value)


def movie(rng: np.random.Generator, frames: int, h: int = 24, w: int = 32) -> np.ndarray:
    return rng.poisson(2.0, size=(frames, h, w)).astype(np.float32)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project.create(tmp_path / "project")


# --- movies ---------------------------------------------------------------------------------


def test_import_movies_mrc_and_tiff_with_gain(finished: Finished) -> None:
    project, run_id, extra = finished["movies"]
    data = extra["folder"]
    out = project.output(run_id, "movies")
    assert out.type == SetKind.MOVIES and out.n_items == 3
    movies = project.read_output_set(run_id)
    table = movies.table.to_pydict()
    assert table["movie_path"] == [str(data / n) for n in ("m1.mrcs", "m2.mrcs", "m3.tiff")]
    assert table["n_frames"] == [5, 7, 6]
    assert table["optics_group"] == [1, 1, 1]
    (group,) = movies.optics
    assert (group.name, group.voltage_kV, group.cs_mm) == ("krios", 200.0, 2.7)
    assert group.amplitude_contrast == 0.07 and group.pixel_size_A == 0.83
    assert group.dose_per_frame_e_A2 == 1.25
    assert group.gain_reference_path == str(data / "gain.mrc")


def test_relative_pattern_is_stored_absolute(
    tmp_path: Path, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mrc(tmp_path / "a.mrcs", movie(np.random.default_rng(1), 3), 1.1, stack=True)
    monkeypatch.chdir(tmp_path)
    from cryostack.core.registry import get_protocol

    ctx = project.validate(get_protocol("import-movies"), {"files": "*.mrcs"}, {})
    assert ctx.params.model_dump()["files"] == str(tmp_path / "*.mrcs")


def test_bad_movies_are_rejected_naming_file_and_problem(tmp_path: Path, project: Project) -> None:
    rng = np.random.default_rng(2)
    good = tmp_path / "good"
    good.mkdir()
    write_mrc(good / "a.mrcs", movie(rng, 4), 1.0, stack=True)
    write_mrc(good / "b.mrcs", movie(rng, 4), 1.0, stack=True)

    message = rejected(project, "import-movies", {"files": str(tmp_path / "none" / "*.tif")})
    assert "none/*.tif: no file matches" in message

    odd = tmp_path / "odd"
    shutil.copytree(good, odd)
    write_mrc(odd / "c.mrcs", movie(rng, 4, h=24, w=30), 1.0, stack=True)
    message = rejected(project, "import-movies", {"files": str(odd / "*.mrcs")})
    assert f"{odd / 'c.mrcs'}: frame size 30x24 px (W x H) differs from 32x24 px" in message

    cut = tmp_path / "cut"
    shutil.copytree(good, cut)
    raw = (cut / "b.mrcs").read_bytes()
    (cut / "b.mrcs").write_bytes(raw[: len(raw) - 1000])
    message = rejected(project, "import-movies", {"files": str(cut / "*.mrcs")})
    assert f"{cut / 'b.mrcs'}: truncated" in message

    write_mrc(tmp_path / "gain.mrc", np.ones((32, 24), np.float32), 1.0)
    params = {"files": str(good / "*.mrcs"), "gain_reference_path": str(tmp_path / "gain.mrc")}
    message = rejected(project, "import-movies", params)
    assert "gain.mrc: gain reference is 24x32 px (W x H), but the movie frames are 32x24" in message
    params["gain_reference_path"] = str(tmp_path / "missing_gain.mrc")
    message = rejected(project, "import-movies", params)
    assert "missing_gain.mrc: file not found" in message

    message = rejected(project, "import-movies", {"files": str(good / "*"), "pixel_size_A": 1.3})
    assert f"{good / 'a.mrcs'}: header pixel size 1 Å contradicts pixel_size_A = 1.3 Å" in message

    write_tiff_movie(tmp_path / "t.tif", movie(rng, 3).astype(np.uint8))
    message = rejected(project, "import-movies", {"files": str(tmp_path / "t.tif")})
    assert "t.tif: no pixel size in the header; give pixel_size_A" in message


def test_cli_refuses_bad_movies_with_exit_2_and_no_run(tmp_path: Path) -> None:
    Project.create(tmp_path / "p").close()
    pattern = tmp_path / "nothing" / "*.tiff"
    args = ["run", "import-movies", "-p", str(tmp_path / "p"), "--set", f"files={pattern}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert f"{pattern}: no file matches this pattern" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert Project.open(tmp_path / "p").runs() == []


# --- micrographs ----------------------------------------------------------------------------


def test_import_micrographs_header_zero_uses_given_pixel_size(finished: Finished) -> None:
    project, run_id, extra = finished["micrographs"]
    mics = project.read_output_set(run_id)
    assert mics.kind == SetKind.MICROGRAPHS
    assert mics.table.column("micrograph_name").to_pylist() == ["mic_001", "mic_002"]
    assert mics.optics[0].pixel_size_A == 1.5
    log = project.path(project.run(run_id).log_path).read_text()
    assert "1 file(s) have no pixel size in the header" in log
    np.testing.assert_array_equal(api.read_images(project, run_id, [1, 0]), extra["images"][::-1])


def test_bad_micrographs_are_rejected(tmp_path: Path, project: Project) -> None:
    write_mrc(tmp_path / "a.mrc", np.zeros((20, 20), np.float32), 1.0)
    write_mrc(tmp_path / "s.mrcs", np.zeros((3, 20, 20), np.float32), 1.0, stack=True)
    message = rejected(project, "import-micrographs", {"files": str(tmp_path / "s.mrcs")})
    assert "s.mrcs: a stack of 3 images, not one micrograph" in message
    message = rejected(
        project, "import-micrographs", {"files": str(tmp_path / "a.mrc"), "pixel_size_A": 2.0}
    )
    assert "a.mrc: header pixel size 1 Å contradicts pixel_size_A = 2 Å" in message
    from cryostack.core.registry import get_protocol

    forced = {"files": str(tmp_path / "a.mrc"), "pixel_size_A": 2.0}
    forced["override_header_pixel_size"] = True
    project.validate(get_protocol("import-micrographs"), forced, {})  # allowed when forced


# --- particles ------------------------------------------------------------------------------


def test_import_relion31_particles(finished: Finished) -> None:
    project, run_id, _ = finished["relion31"]
    particles = project.read_output_set(run_id, "particles")
    reference = read_star(RELION31_STAR)
    assert len(particles) == 5
    assert (
        particles.table.column("image_path").to_pylist()
        == [str(TEST_DATA / "cryodrgn" / "relion31.mrcs")] * 5
    )
    assert particles.table.column("image_index").to_pylist() == [0, 1, 2, 3, 4]
    for column in ("defocus_u_A", "rot_deg", "tilt_deg", "psi_deg", "origin_x_A"):
        np.testing.assert_array_equal(
            particles.table.column(column).to_numpy(), reference.table.column(column).to_numpy()
        )
    (group,) = particles.optics
    assert (group.pixel_size_A, group.image_size_px, group.cs_mm) == (2.806, 256, 0.01)
    log = project.path(project.run(run_id).log_path).read_text()
    assert "header pixel size 1 Å differs from 2.806 Å" in log  # the STAR is the authority


def test_import_cryosparc_cs_with_its_stack(finished: Finished) -> None:
    project, run_id, extra = finished["cryosparc"]
    particles = project.read_output_set(run_id)
    assert len(particles) == 7
    np.testing.assert_allclose(
        particles.table.column("defocus_u_A").to_numpy(),
        extra["reference"].table.column("defocus_u_A").to_numpy(),
    )
    assert particles.optics[0].voltage_kV == 300.0 and particles.optics[0].image_size_px == 320
    images = api.read_images(project, run_id, [6, 2])
    np.testing.assert_array_equal(images, extra["images"][[6, 2]])


def test_import_trpv1_star_with_root_and_copied_stacks(finished: Finished) -> None:
    project, run_id, _ = finished["trpv1"]
    particles = project.read_output_set(run_id)
    assert len(particles) == 10
    (stack,) = set(particles.table.column("image_path").to_pylist())
    assert stack.startswith(f"{project.run(run_id).run_dir}/steps/")  # inside the project
    assert project.path(stack).read_bytes() == TRPV1_STACK.read_bytes()
    (group,) = particles.optics
    assert (group.optics_group, group.pixel_size_A, group.image_size_px) == (7, 4.88, 48)
    images = api.read_images(project, run_id, [0, 9])
    assert images.shape == (2, 48, 48)


def test_bad_particles_are_rejected(tmp_path: Path, project: Project) -> None:
    message = rejected(project, "import-particles", {"file": str(tmp_path / "nope.star")})
    assert "nope.star: file not found" in message
    message = rejected(project, "import-particles", {"file": str(TRPV1_STAR)})  # no root
    assert "1 of 1 image stack(s)" in message and "not found: " in message
    assert f"{TEST_DATA}/cryojax/batch_0_restacked.mrc (set root to the folder" in message
    # a STAR that refers to image 9 of a 5-image stack
    star = read_star(RELION31_STAR)
    index = np.array([0, 1, 2, 3, 8])
    import pyarrow as pa

    star.table = star.table.set_column(
        star.table.column_names.index("image_index"), "image_index", pa.array(index)
    )
    write_star(star, tmp_path / "bad.star")
    message = rejected(project, "import-particles", {"file": str(tmp_path / "bad.star")})
    assert "relion31.mrcs: has 5 images, but image 9 (1-based) is referenced" in message
    # wrong box size for the optics group
    star = read_star(RELION31_STAR)
    star.optics = [star.optics[0].model_copy(update={"image_size_px": 128})]
    write_star(star, tmp_path / "box.star")
    message = rejected(project, "import-particles", {"file": str(tmp_path / "box.star")})
    assert "relion31.mrcs: images are 256x256 px but optics group opticsGroup1 says 128" in message


# --- volumes --------------------------------------------------------------------------------


def test_import_volume_with_half_maps_and_zero_header(finished: Finished) -> None:
    project, run_id, extra = finished["volume"]
    maps = extra["maps"]
    out = project.output(run_id, "volume")
    assert out.type == "Volume"
    assert out.meta["pixel_size_A"] == 2.1 and out.meta["shape"] == [16, 16, 16]
    assert len(out.meta["companions"]) == 2
    data, pixel = api.read_volume(project, run_id)
    np.testing.assert_array_equal(data, maps[0])
    assert pixel == pytest.approx(2.1)
    _, info = read_mrc(project.path(out.path))  # the project's copy has the pixel size
    assert info.pixel_size_A == pytest.approx(2.1)
    half2, _ = read_mrc(project.path(out.meta["companions"][1]))
    np.testing.assert_array_equal(half2, maps[2])


def test_bad_volumes_are_rejected(tmp_path: Path, project: Project) -> None:
    write_mrc(tmp_path / "image.mrc", np.zeros((16, 16), np.float32), 1.0)
    message = rejected(project, "import-volume", {"file": str(tmp_path / "image.mrc")})
    assert "image.mrc: a 2D image of 16x16 px, not a 3D map" in message

    write_mrc(tmp_path / "v.mrc", np.zeros((16, 16, 16), np.float32), 1.0)
    write_mrc(tmp_path / "h.mrc", np.zeros((12, 12, 12), np.float32), 1.0)
    params = {"file": str(tmp_path / "v.mrc"), "half_maps": [str(tmp_path / "h.mrc")] * 2}
    message = rejected(project, "import-volume", params)
    assert "h.mrc: half map of shape (12, 12, 12) differs from the map's (16, 16, 16)" in message

    message = rejected(
        project, "import-volume", {"file": str(tmp_path / "v.mrc"), "pixel_size_A": 2}
    )
    assert "v.mrc: header pixel size 1 Å contradicts pixel_size_A = 2 Å" in message

    raw = (tmp_path / "v.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[:5000])
    message = rejected(project, "import-volume", {"file": str(tmp_path / "cut.mrc")})
    assert "cut.mrc: truncated: header says 16 sections of 16x16 float32" in message

    message = rejected(project, "import-volume", {"file": str(EMDB_ANISOTROPIC)})
    assert "EMD-3001.map: anisotropic voxel size" in message


def test_mask_import_checks(tmp_path: Path, project: Project) -> None:
    """import-mask (its own protocol: its output type is Mask) shares the volume checks."""
    from cryostack.protocols.import_volume import ImportMask

    assert ImportMask.outputs["mask"].type == "Mask"
    mask = np.zeros((16, 16, 16), np.float32)
    mask[4:12, 4:12, 4:12] = 1
    write_mrc(tmp_path / "mask.mrc", mask, 1.2)
    ctx = project.validate(ImportMask, {"file": str(tmp_path / "mask.mrc")}, {})
    assert ctx.params.model_dump()["file"] == str(tmp_path / "mask.mrc")
    write_mrc(tmp_path / "flat.mrc", mask[0], 1.2)
    with pytest.raises(ValidationError, match=r"flat\.mrc: a 2D image of 16x16 px, not a 3D map"):
        project.validate(ImportMask, {"file": str(tmp_path / "flat.mrc")}, {})
    with pytest.raises(ValidationError, match="half_maps"):  # masks have no half maps
        project.validate(ImportMask, {"file": str(tmp_path / "mask.mrc"), "half_maps": []}, {})


def test_imported_movies_and_micrographs_export_as_star(finished: Finished, tmp_path: Path) -> None:
    project, movies_run, extra = finished["movies"]
    star = export_output(project, str(movies_run), tmp_path / "movies.star", "star")
    text = star.read_text()
    assert "_rlnMicrographGainName" in text and str(extra["folder"] / "gain.mrc") in text
    back = read_star(star)
    assert back.kind == SetKind.MOVIES
    assert back.table.column("movie_path").to_pylist()[2] == str(extra["folder"] / "m3.tiff")
    assert back.optics[0].pixel_size_A == 0.83 and back.optics[0].voltage_kV == 200
    project, mics_run, extra = finished["micrographs"]
    back = read_star(export_output(project, str(mics_run), tmp_path / "mics.star", "star"))
    assert back.kind == SetKind.MICROGRAPHS and len(back) == 2
    assert back.table.column("micrograph_path").to_pylist()[0] == str(
        extra["folder"] / "mic_001.mrc"
    )
    assert back.optics[0].pixel_size_A == 1.5
