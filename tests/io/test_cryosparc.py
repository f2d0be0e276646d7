"""cryoSPARC .cs import/export on real cryoSPARC files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryostack.em.rotations import euler_to_matrix
from cryostack.io.cryosparc import read_cs, write_cs
from cryostack.io.errors import FormatError
from cryostack.io.star import read_star

CRYODRGN = Path(__file__).resolve().parents[1] / "data" / "cryodrgn"
J24 = CRYODRGN / "cryosparc_P12_J24_001_particles.cs"
J2 = CRYODRGN / "cryosparc_J2_particles_exported.cs"


def _rodrigues(v: np.ndarray) -> np.ndarray:
    """Active rotation matrices of axis-angle vectors (N, 3), written out independently here."""
    theta = np.linalg.norm(v, axis=1)[:, None, None]
    axis = v / np.linalg.norm(v, axis=1, keepdims=True)
    x, y, z = axis.T
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=1).reshape(-1, 3, 3)
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def _col(item_set, name: str) -> np.ndarray:
    return item_set.table.column(name).to_numpy()


def test_cs_and_star_of_the_same_particles_agree() -> None:
    """EMPIAR-10076: the .cs and the STAR describe the same 7 particles (CTF and images only)."""
    cs = read_cs(CRYODRGN / "empiar_10076_7.cs")
    star = read_star(CRYODRGN / "empiar_10076_7.star")
    assert len(cs) == len(star) == 7
    for name in ("defocus_u_A", "defocus_v_A"):  # df1 is U
        np.testing.assert_allclose(_col(cs, name), _col(star, name), atol=0.01)
    np.testing.assert_allclose(
        _col(cs, "defocus_angle_deg"), _col(star, "defocus_angle_deg"), atol=1e-5
    )
    assert cs.table.column("image_path").to_pylist() == star.table.column("image_path").to_pylist()
    np.testing.assert_array_equal(_col(cs, "image_index"), _col(star, "image_index"))
    (gc,), (gs,) = cs.optics, star.optics
    assert (gc.voltage_kV, gc.cs_mm, gc.amplitude_contrast) == (
        gs.voltage_kV,
        gs.cs_mm,
        gs.amplitude_contrast,
    )
    assert gc.pixel_size_A == pytest.approx(gs.pixel_size_A, abs=1e-6)
    assert gc.image_size_px == 320 and gc.name == "exp_group23"


def test_refinement_file_poses_shifts_and_halves() -> None:
    raw = np.load(J24)
    s = read_cs(J24)
    assert len(s) == 2019
    (g,) = s.optics
    assert (g.voltage_kV, g.cs_mm, g.amplitude_contrast, g.pixel_size_A, g.image_size_px) == (
        200.0, 2.0, 0.07, 2.95, 180,
    )  # fmt: skip
    r = s.table.slice(0, 1).to_pylist()[0]
    assert r["image_path"] == str(
        CRYODRGN
        / "J19/extract/20150917_05196_DNA-TET-25k-DE20_raw.region_000.sum-all_003-072_particles.mrc"
    )
    assert r["defocus_u_A"] == pytest.approx(45591.37, abs=0.01)
    assert r["defocus_angle_deg"] == pytest.approx(np.rad2deg(-1.3636448), abs=1e-5)
    np.testing.assert_allclose(
        _col(s, "origin_x_A"), raw["alignments3D/shift"][:, 0] * 2.95, rtol=1e-6
    )
    np.testing.assert_allclose(
        _col(s, "origin_y_A"), raw["alignments3D/shift"][:, 1] * 2.95, rtol=1e-6
    )
    assert r["origin_x_A"] == pytest.approx(11.334375 * 2.95, rel=1e-6)
    np.testing.assert_array_equal(_col(s, "random_subset"), raw["alignments3D/split"] + 1)
    assert set(_col(s, "random_subset").tolist()) == {1, 2}
    # RELION's A = R(pose)^T: the Euler angles must rebuild that matrix
    euler = np.stack([_col(s, c) for c in ("rot_deg", "tilt_deg", "psi_deg")], axis=1)
    a = euler_to_matrix(torch.from_numpy(euler)).numpy()
    expected = np.transpose(_rodrigues(raw["alignments3D/pose"].astype(np.float64)), (0, 2, 1))
    np.testing.assert_allclose(a, expected, atol=1e-6)
    assert s.table.column("cs:uid")[0].as_py() == 15494748553812943456
    assert s.table.column("cs:alignments3D/cross_cor")[0].as_py() == pytest.approx(
        211.651, abs=1e-3
    )


def test_2d_classification_file_with_project_paths(tmp_path: Path) -> None:
    raw = np.load(J2)
    s = read_cs(J2, root=tmp_path)
    assert len(s) == 22
    assert s.table.column("image_path")[0].as_py() == str(
        tmp_path / "J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs"
    )
    assert "rot_deg" not in s.table.column_names
    psi = (np.rad2deg(raw["alignments2D/pose"].astype(np.float64)) + 180) % 360 - 180
    np.testing.assert_allclose(_col(s, "psi_deg"), psi)
    assert s.table.slice(0, 1).to_pylist()[0]["origin_y_A"] == pytest.approx(12.0 * 1.345, rel=1e-6)
    np.testing.assert_array_equal(_col(s, "class_id"), raw["alignments2D/class"] + 1)
    assert s.table.column("cs:ctf/anisomag")[0].as_py() == [0.0, 0.0, 0.0, 0.0]


def test_micrograph_locations_become_pixels(tmp_path: Path) -> None:
    dtype = [
        ("uid", "<u8"), ("blob/path", "S10"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
        ("location/micrograph_path", "S12"), ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"), ("location/micrograph_shape", "<u4", (2,)),
    ]  # fmt: skip
    data = np.zeros(2, dtype=dtype)
    data["blob/path"] = [b">J5/p.mrc", b"/abs/p.mrc"]
    data["blob/psize_A"] = 1.1
    data["location/micrograph_path"] = b">J3/mic.mrc"
    data["location/center_x_frac"] = [0.25, 0.75]
    data["location/center_y_frac"] = [0.5, 0.125]
    data["location/micrograph_shape"] = [3710, 3838]  # (y, x)
    with open(tmp_path / "p.cs", "wb") as handle:
        np.save(handle, data)
    s = read_cs(tmp_path / "p.cs")
    np.testing.assert_allclose(_col(s, "coord_x_px"), [0.25 * 3838, 0.75 * 3838])
    np.testing.assert_allclose(_col(s, "coord_y_px"), [0.5 * 3710, 0.125 * 3710])
    assert s.table.column("micrograph_name").to_pylist() == ["J3/mic.mrc"] * 2
    assert s.table.column("image_path").to_pylist() == [str(tmp_path / "J5/p.mrc"), "/abs/p.mrc"]


def test_write_cs_round_trip(tmp_path: Path) -> None:
    original = read_cs(J24)
    write_cs(original, tmp_path / "out.cs", root=CRYODRGN)
    raw = np.load(tmp_path / "out.cs")
    assert raw["blob/path"][0].startswith(b"J19/extract/")
    back = read_cs(tmp_path / "out.cs", root=CRYODRGN)
    assert back.optics == original.optics
    for name in ("image_path", "image_index", "random_subset", "class_id", "cs:uid", "cs:ctf/type"):
        assert back.table.column(name).equals(original.table.column(name)), name
    for name in ("defocus_u_A", "defocus_angle_deg", "origin_x_A", "origin_y_A"):
        np.testing.assert_allclose(_col(back, name), _col(original, name), rtol=1e-6, atol=1e-4)
    euler = [
        np.stack([_col(x, c) for c in ("rot_deg", "tilt_deg", "psi_deg")], 1)
        for x in (original, back)
    ]
    a, b = (euler_to_matrix(torch.from_numpy(e)).numpy() for e in euler)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["out.cs"]


def test_bad_files_are_format_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.cs"
    text.write_text("hello")
    with pytest.raises(FormatError, match=r"notes\.cs: not a cryoSPARC \.cs"):
        read_cs(text)
    no_blob = tmp_path / "mics.cs"
    with open(no_blob, "wb") as handle:
        np.save(handle, np.zeros(3, dtype=[("uid", "<u8"), ("ctf/df1_A", "<f4")]))
    with pytest.raises(
        FormatError, match=r"mics\.cs: particles need field\(s\) blob/path, blob/idx"
    ):
        read_cs(no_blob)
