"""RELION STAR import/export on real files from RELION 3.0, 3.1 and 5."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cryostack.core.datamodel import ItemSet, OpticsGroup, SetKind
from cryostack.io.errors import FormatError, FormatWarning
from cryostack.io.star import read_star, write_star

DATA = Path(__file__).resolve().parents[1] / "data"
CRYODRGN = DATA / "cryodrgn"
PARTICLE_FILES = [
    "cryodrgn/relion31.star",
    "cryodrgn/relion31.v2.star",
    "cryodrgn/relion31.6opticsgroups.star",
    "cryodrgn/relion5.star",
    "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star",
    "cryodrgn/empiar_10076_7.star",
    "aspire/sample_particles_relion31.star",
    "aspire/sample_relion_data.star",
    "cryojax/trpv1_small_stack.star",
]


def _read(name: str) -> ItemSet:
    """Read a fixture; the two 3.0 files without amplitude contrast warn about it."""
    if name.endswith("PfCRT.star"):
        with pytest.warns(FormatWarning, match="rlnAmplitudeContrast"):
            return read_star(DATA / name)
    return read_star(DATA / name)


def _row(item_set: ItemSet, i: int) -> dict:
    return item_set.table.slice(i, 1).to_pylist()[0]


def test_relion31_values_match_the_file_text() -> None:
    s = read_star(CRYODRGN / "relion31.star")
    assert s.kind == SetKind.PARTICLES and len(s) == 5
    (g,) = s.optics
    assert (g.optics_group, g.name, g.voltage_kV, g.cs_mm, g.amplitude_contrast) == (
        1, "opticsGroup1", 300.0, 0.01, 0.1,
    )  # fmt: skip
    assert (g.pixel_size_A, g.image_size_px) == (2.806, 256)
    assert s.meta["relion_optics_extra"]["1"] == {
        "rlnMicrographOriginalPixelSize": 1.403,
        "rlnImageDimensionality": 2,
    }
    r = _row(s, 0)
    assert r["image_path"] == str(CRYODRGN / "relion31.mrcs") and r["image_index"] == 0
    assert (r["coord_x_px"], r["coord_y_px"]) == (3277.0, 983.0)
    assert (r["defocus_u_A"], r["defocus_v_A"], r["defocus_angle_deg"]) == (
        13108.082418, 12845.582418, -160.39,
    )  # fmt: skip
    assert (r["rot_deg"], r["tilt_deg"], r["psi_deg"]) == (-102.30296, 82.318041, 124.706463)
    assert (r["origin_x_A"], r["origin_y_A"]) == (0.019324, -0.64686)
    assert (r["random_subset"], r["class_id"], r["log_likelihood"]) == (1, 1, 2.586789e05)
    assert r["rln:rlnNrOfSignificantSamples"] == 450
    assert r["rln:rlnImageOriginalName"].startswith("000001@Extract/job133/Micrographs/18aug10a")
    assert _row(s, 4)["image_index"] == 4 and _row(s, 4)["psi_deg"] == 140.014019


def test_optics_after_particles_reads_the_same() -> None:
    a = read_star(CRYODRGN / "relion31.star")
    b = read_star(CRYODRGN / "relion31.v2.star")
    assert a.table.equals(b.table) and a.optics == b.optics


def test_six_optics_groups_come_through() -> None:
    path = CRYODRGN / "relion31.6opticsgroups.star"
    s = read_star(path)
    assert len(s) == 139
    assert [g.name for g in s.optics] == [f"opticsGroup{i}" for i in (5, 3, 2, 1, 4, 6)]
    by_id = s.optics_by_id()
    assert by_id[4].cs_mm == 2.6 and by_id[2].pixel_size_A == 1.24
    assert by_id[6].micrograph_pixel_size_A == 1.035 and by_id[1].beam_tilt_x_mrad == 0.657334
    extra = s.meta["relion_optics_extra"]["1"]
    assert extra["rlnOddZernike"].startswith("[1.70554063513,")
    assert extra["rlnMagMat00"] == 1.011472
    # count particles per group straight from the text (column 11 = rlnOpticsGroup)
    rows = [line.split() for line in path.read_text().splitlines() if "@" in line]
    expected = Counter(int(r[10]) for r in rows)
    assert Counter(s.table.column("optics_group").to_pylist()) == expected
    r = _row(s, 0)
    assert r["image_path"] == str(CRYODRGN / "Polish/job520/Micrographs/0003_shiny.mrcs")
    assert (r["image_index"], r["optics_group"], r["origin_x_A"]) == (2, 6, 13.284554)
    assert r["micrograph_name"] == "MotionCorr/job002/Micrographs/0003.mrc"


def test_relion5_file() -> None:
    s = read_star(CRYODRGN / "relion5.star")
    assert s.meta["relion_version"] == 50001 and len(s) == 17
    (g,) = s.optics
    assert (g.voltage_kV, g.cs_mm, g.pixel_size_A, g.image_size_px) == (100.0, 1.6, 0.89, 448)
    assert (g.beam_tilt_x_mrad, g.beam_tilt_y_mrad) == (0.043489, 0.014097)
    r0, r1 = _row(s, 0), _row(s, 1)
    assert r0["image_path"].endswith("cryodrgn/toy_images_a.mrcs") and r0["image_index"] == 0
    assert r1["image_path"].endswith("cryodrgn/toy_images_b.mrcs") and r1["image_index"] == 1
    assert (r0["psi_deg"], r0["score"], r1["random_subset"]) == (141.158035, 16.459581, 2)


def test_relion30_file_with_per_particle_optics_and_pixel_origins() -> None:
    s = _read("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    assert s.meta["relion_block"] == "images" and len(s) == 5
    (g,) = s.optics  # detector 1.035 µm at magnification 10000
    assert (g.voltage_kV, g.cs_mm, g.pixel_size_A) == (300.0, 0.001, pytest.approx(1.035))
    r = _row(s, 0)
    assert (r["psi_deg"], r["rot_deg"], r["tilt_deg"]) == (98.22569, 16.09353, 86.352776)
    assert r["origin_x_A"] == pytest.approx(-0.14063 * 1.035)
    assert r["origin_y_A"] == pytest.approx(-0.04688 * 1.035)
    assert r["random_subset"] == 2 and r["defocus_v_A"] == 17521.4
    assert _row(s, 4)["rln:rlnImageOriginalName"] == "000006@J407/imported/subtracted.mrcs"
    assert not any(c.startswith("rln:rlnMagnification") for c in s.table.column_names)


def test_empiar_star_pixel_size_from_detector_and_magnification() -> None:
    s = read_star(CRYODRGN / "empiar_10076_7.star")
    (g,) = s.optics
    assert g.pixel_size_A == pytest.approx(5e4 / 38168)
    assert (g.amplitude_contrast, g.cs_mm) == (0.07, 2.7)
    assert s.table.column("micrograph_name").to_pylist() == [str(i) for i in range(1, 8)]
    assert s.table.column("image_index").to_pylist() == list(range(7))
    assert s.table.column("defocus_u_A").to_pylist()[2] == 15150.7


def test_aspire_files() -> None:
    s31 = read_star(DATA / "aspire/sample_particles_relion31.star")
    assert [g.voltage_kV for g in s31.optics] == [300.0, 200.0]
    assert s31.meta["relion_optics_extra"]["2"]["rlnMtfFileName"] == "mtf_k2_200kV.star"
    r = _row(s31, 0)
    assert (r["coord_x_px"], r["psi_deg"], r["origin_x_A"]) == (2158.111921, 71.118492, 0.1996)
    s30 = read_star(DATA / "aspire/sample_relion_data.star")
    (g,) = s30.optics
    assert g.pixel_size_A == pytest.approx(1.338, abs=1e-6)
    assert _row(s30, 2)["origin_y_A"] == pytest.approx(-0.0504 * g.pixel_size_A)
    with pytest.raises(FormatError, match="no particle, micrograph, movie or coordinate table"):
        read_star(DATA / "aspire/sample_data_model.star")


def test_cryojax_optics_group_number_is_kept() -> None:
    s = read_star(DATA / "cryojax/trpv1_small_stack.star")
    assert [g.optics_group for g in s.optics] == [7] and s.optics[0].pixel_size_A == 4.88
    assert set(s.table.column("optics_group").to_pylist()) == {7}
    r = _row(s, 0)
    assert r["image_path"] == str(DATA / "cryojax/batch_0_restacked.mrc")
    assert (r["rot_deg"], r["origin_x_A"], r["random_subset"]) == (-30.073301, -8.149219, 2)


@pytest.mark.parametrize("name", PARTICLE_FILES)
@pytest.mark.parametrize("version", ["3.1", "5"])
def test_round_trip_keeps_every_value(tmp_path: Path, name: str, version: str) -> None:
    original = _read(name)
    out = tmp_path / "out.star"
    write_star(original, out, version=version)
    text = out.read_text()
    assert text.startswith("# version 30001" if version == "3.1" else "# version 50001")
    assert "data_optics" in text and "data_particles" in text
    back = read_star(out)
    assert back.table.column_names == original.table.column_names
    assert back.table.equals(original.table)
    assert back.optics == original.optics
    if "relion_optics_extra" in original.meta:  # RELION needs rlnImageDimensionality: added
        expected = {
            k: {"rlnImageDimensionality": 2, **v}
            for k, v in original.meta["relion_optics_extra"].items()
        }
        assert back.meta["relion_optics_extra"] == expected


def test_relion30_export_round_trip(tmp_path: Path) -> None:
    original = read_star(DATA / "aspire/sample_relion_data.star")
    write_star(original, tmp_path / "old.star", version="3.0")
    text = (tmp_path / "old.star").read_text()
    assert "data_optics" not in text and "_rlnOriginX #" in text and "_rlnMagnification" in text
    back = read_star(tmp_path / "old.star")
    assert back.table.equals(original.table) and back.optics == original.optics


def test_paths_follow_root_on_read_and_write(tmp_path: Path) -> None:
    project = tmp_path / "project"
    s = read_star(CRYODRGN / "relion31.star", root=project)
    assert s.table.column("image_path")[0].as_py() == str(project / "relion31.mrcs")
    write_star(s, project / "Export" / "particles.star", root=project)
    text = (project / "Export" / "particles.star").read_text()
    assert "000005@relion31.mrcs " in text
    back = read_star(project / "Export" / "particles.star", root=project)
    assert back.table.equals(s.table)
    # outside the root: written absolute
    write_star(s, tmp_path / "elsewhere.star", root=tmp_path / "other")
    assert f"000001@{project}/relion31.mrcs " in (tmp_path / "elsewhere.star").read_text()


def test_written_file_points_at_real_images(tmp_path: Path) -> None:
    shutil.copy(CRYODRGN / "relion31.mrcs", tmp_path / "relion31.mrcs")
    s = read_star(CRYODRGN / "relion31.star", root=tmp_path)
    write_star(s, tmp_path / "p.star")
    back = read_star(tmp_path / "p.star")
    assert all(Path(p).is_file() for p in back.table.column("image_path").to_pylist())


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_micrographs_movies_and_coordinates(tmp_path: Path) -> None:
    optics = (
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnVoltage\n"
        "_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnMicrographOriginalPixelSize\n"
        "_rlnMicrographPixelSize\n1 og1 300 2.7 0.1 0.5 1.0\n\n"
    )
    mics = _write_text(
        tmp_path / "mics.star",
        "# version 30001\n" + optics + "data_micrographs\nloop_\n_rlnMicrographName\n"
        "_rlnOpticsGroup\n_rlnDefocusU\n_rlnCtfImage\nMC/a.mrc 1 12000.5 CTF/a.ctf:mrc\n",
    )
    m = read_star(mics)
    assert m.kind == SetKind.MICROGRAPHS and m.optics[0].pixel_size_A == 1.0
    assert _row(m, 0)["micrograph_path"] == str(tmp_path / "MC/a.mrc")
    assert _row(m, 0)["micrograph_name"] == "MC/a.mrc"
    assert _row(m, 0)["rln:rlnCtfImage"] == "CTF/a.ctf:mrc"
    write_star(m, tmp_path / "m2.star")
    assert read_star(tmp_path / "m2.star").table.equals(m.table)

    movies = _write_text(
        tmp_path / "movies.star",
        "# version 30001\n" + optics + "data_movies\nloop_\n_rlnMicrographMovieName\n"
        "_rlnOpticsGroup\n/data/m1.tif 1\nMovies/m2.tif 1\n",
    )
    mv = read_star(movies)
    assert mv.kind == SetKind.MOVIES and mv.optics[0].pixel_size_A == 0.5
    assert mv.table.column("movie_path").to_pylist() == [
        "/data/m1.tif",
        str(tmp_path / "Movies/m2.tif"),
    ]

    coords = _write_text(
        tmp_path / "a_autopick.star",
        "data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnAutopickFigureOfMerit\n"
        "10.0 20.5 0.7\n30 40 0.2\n",
    )
    c = read_star(coords)
    assert c.kind == SetKind.COORDINATES and c.optics == []
    assert c.table.column("coord_y_px").to_pylist() == [20.5, 40.0]
    assert c.table.column("score").to_pylist() == [0.7, 0.2]
    assert c.table.column("micrograph_name").to_pylist() == ["a_autopick"] * 2


def test_missing_columns_are_named(tmp_path: Path) -> None:
    no_image = _write_text(
        tmp_path / "p.star",
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 1.0\n\n"
        "data_particles\nloop_\n_rlnMicrographName\n_rlnOpticsGroup\na.mrc 1\n",
    )
    with pytest.raises(
        FormatError, match=r"p\.star: data_particles lacks required column\(s\) rlnImageName"
    ):
        read_star(no_image)
    no_pixel = _write_text(
        tmp_path / "q.star",
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n1 300\n\n"
        "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@a.mrcs 1\n",
    )
    with pytest.raises(
        FormatError, match=r"data_optics lacks required column\(s\) rlnImagePixelSize"
    ):
        read_star(no_pixel)
    bad_group = _write_text(
        tmp_path / "r.star",
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 1.0\n\n"
        "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@a.mrcs 2\n",
    )
    with pytest.raises(FormatError, match=r"optics group\(s\) \[2\] used but not in data_optics"):
        read_star(bad_group)
    no_pixel_old = _write_text(tmp_path / "s.star", "data_\nloop_\n_rlnImageName\n1@a.mrcs\n")
    with pytest.raises(FormatError, match="no pixel size"):
        read_star(no_pixel_old)
    with pytest.warns(FormatWarning, match=r"no rlnVoltage \(using 300.0\)"):
        assert read_star(no_pixel_old, pixel_size_A=1.5).optics[0].pixel_size_A == 1.5


def test_write_refuses_incomplete_sets(tmp_path: Path) -> None:
    table = pa.table({"image_path": ["/a.mrcs"], "image_index": pa.array([0], pa.int64())})
    with pytest.raises(FormatError, match="missing column\\(s\\) optics_group"):
        write_star(ItemSet(SetKind.PARTICLES, table), tmp_path / "x.star")
    table = table.append_column("optics_group", pa.array([3], pa.int32()))
    with pytest.raises(FormatError, match=r"optics group\(s\) \[3\] have no OpticsGroup"):
        write_star(
            ItemSet(SetKind.PARTICLES, table, [OpticsGroup(pixel_size_A=1.0)]), tmp_path / "x.star"
        )
    assert not (tmp_path / "x.star").exists()
    assert list(tmp_path.iterdir()) == []


def test_written_numbers_are_exact(tmp_path: Path) -> None:
    values = np.array([1e-7, 123456.789012345, -0.5, 3.0])
    table = pa.table(
        {
            "image_path": ["s.mrcs"] * 4,
            "image_index": pa.array(range(4), pa.int64()),
            "optics_group": pa.array([1] * 4, pa.int32()),
            "defocus_u_A": values,
            "rln:rlnCustom": values,
        }
    )
    s = ItemSet(SetKind.PARTICLES, table, [OpticsGroup(pixel_size_A=1.1)])
    write_star(s, tmp_path / "n.star")
    back = read_star(tmp_path / "n.star")
    np.testing.assert_array_equal(back.table.column("defocus_u_A").to_numpy(), values)
    np.testing.assert_array_equal(back.table.column("rln:rlnCustom").to_numpy(), values)
    assert back.table.column("image_index").to_pylist() == [0, 1, 2, 3]
