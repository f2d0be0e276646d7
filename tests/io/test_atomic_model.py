"""Atomic model -> Coulomb potential map (gemmi electron form factors)."""

from __future__ import annotations

import gzip
from pathlib import Path

import gemmi
import numpy as np
import pytest

from cryostack.io.atomic_model import model_to_map, read_model, shipped_model_path

PIXEL_A = 3.0
BOX = 64


def _atom_line(serial: int, element: str, x: float, y: float, z: float, b: float = 20.0) -> str:
    name = f" {element:<3}"
    return (
        f"ATOM  {serial:5d} {name} ALA A{serial:4d}    "
        f"{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{b:6.2f}          {element:>2}\n"
    )


def _write_pdb(path: Path, atoms: list[tuple[str, float, float, float]]) -> Path:
    lines = [_atom_line(i + 1, e, x, y, z) for i, (e, x, y, z) in enumerate(atoms)]
    path.write_text("".join(lines) + "END\n")
    return path


def _f_e0(element: str) -> float:
    """Electron form factor at s = 0 (Å): the sum of the Gaussian amplitudes of ITC 4.3.2.2."""
    return float(sum(gemmi.Element(element).c4322.get_coefs()[:5]))


def _centroid_zyx(volume: np.ndarray) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    return np.array([(volume * g).sum() / volume.sum() for g in grids])


@pytest.fixture(scope="module")
def trpv1_map() -> np.ndarray:
    return model_to_map(shipped_model_path("trpv1"), pixel_size_A=PIXEL_A, box_size_px=BOX)


def test_shipped_model_loads() -> None:
    path = shipped_model_path("trpv1")
    assert path.is_file() and path.stat().st_size < 1_000_000
    model = read_model(path)[0]
    assert [chain.name for chain in model] == ["B", "A", "C", "D"]
    assert model.count_atom_sites() == 18636


def test_map_shape_and_integral_equal_sum_of_form_factors(trpv1_map: np.ndarray) -> None:
    assert trpv1_map.shape == (BOX, BOX, BOX) and trpv1_map.dtype == np.float32
    model = read_model(shipped_model_path())[0]
    expected = sum(
        atom.occ * _f_e0(atom.element.name) for chain in model for res in chain for atom in res
    )
    assert trpv1_map.sum() * PIXEL_A**3 == pytest.approx(expected, rel=2e-3)


def test_centre_of_mass_at_box_centre(trpv1_map: np.ndarray) -> None:
    np.testing.assert_allclose(_centroid_zyx(trpv1_map), [BOX // 2] * 3, atol=0.5)
    odd = model_to_map(shipped_model_path(), pixel_size_A=4.0, box_size_px=45)
    np.testing.assert_allclose(_centroid_zyx(odd), [22, 22, 22], atol=0.5)


def test_single_atom_lands_at_zyx_index_and_integrates_to_f_e0(tmp_path: Path) -> None:
    pdb = _write_pdb(tmp_path / "one.pdb", [("C", 10.0, 20.0, 30.0)])
    volume = model_to_map(pdb, pixel_size_A=1.0, box_size_px=48, centre=False)
    assert np.unravel_index(volume.argmax(), volume.shape) == (30, 20, 10)
    assert volume.sum() == pytest.approx(_f_e0("C"), rel=2e-3)


def test_shifting_the_model_shifts_the_map(tmp_path: Path) -> None:
    structure = read_model(shipped_model_path())
    structure[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(96, 96, 96)))
    structure.write_pdb(str(tmp_path / "a.pdb"))
    shift_px = (2, -3, 5)  # (x, y, z)
    structure[0].transform_pos_and_adp(
        gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*(PIXEL_A * s for s in shift_px)))
    )
    structure.write_pdb(str(tmp_path / "b.pdb"))
    a = model_to_map(tmp_path / "a.pdb", pixel_size_A=PIXEL_A, box_size_px=BOX, centre=False)
    b = model_to_map(tmp_path / "b.pdb", pixel_size_A=PIXEL_A, box_size_px=BOX, centre=False)
    rolled = np.roll(a, (shift_px[2], shift_px[1], shift_px[0]), axis=(0, 1, 2))
    assert np.abs(b - rolled).max() < 1e-3 * a.max()
    # centre=True undoes the shift
    a_c = model_to_map(tmp_path / "a.pdb", pixel_size_A=PIXEL_A, box_size_px=BOX)
    b_c = model_to_map(tmp_path / "b.pdb", pixel_size_A=PIXEL_A, box_size_px=BOX)
    assert np.abs(a_c - b_c).max() < 1e-3 * a.max()


def test_bfactor_blur_attenuates_power_by_exp_minus_b_s2_over_2(trpv1_map: np.ndarray) -> None:
    b_A2 = 200.0
    blurred = model_to_map(
        shipped_model_path(), pixel_size_A=PIXEL_A, box_size_px=BOX, bfactor_A2=b_A2
    )
    f0 = np.abs(np.fft.fftn(trpv1_map)) ** 2
    f1 = np.abs(np.fft.fftn(blurred)) ** 2
    s = np.fft.fftfreq(BOX, d=PIXEL_A)
    s_norm = np.sqrt(s[:, None, None] ** 2 + s[None, :, None] ** 2 + s[None, None, :] ** 2)
    shell = np.abs(s_norm - 1 / 8.0) < 0.5 / (BOX * PIXEL_A)  # the 8 Å shell
    ratio = f1[shell].sum() / f0[shell].sum()
    assert ratio == pytest.approx(np.exp(-b_A2 * (1 / 8.0) ** 2 / 2), rel=0.05)
    high = s_norm > 1 / 8.0
    assert f1[high].sum() / f1.sum() < 0.2 * f0[high].sum() / f0.sum()
    assert blurred.sum() == pytest.approx(trpv1_map.sum(), rel=1e-4)


def test_gzipped_and_mmcif_models_give_the_same_map(tmp_path: Path) -> None:
    atoms = [("C", 40.0, 50.0, 60.0), ("N", 45.0, 52.0, 58.0), ("S", 38.0, 47.0, 64.0)]
    pdb = _write_pdb(tmp_path / "m.pdb", atoms)
    gz = tmp_path / "m.pdb.gz"
    gz.write_bytes(gzip.compress(pdb.read_bytes()))
    cif = tmp_path / "m.cif"
    structure = gemmi.read_structure(str(pdb))
    structure.setup_entities()
    structure.make_mmcif_document().write_file(str(cif))
    maps = [model_to_map(p, pixel_size_A=2.0, box_size_px=32) for p in (pdb, gz, cif)]
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], atol=1e-6)


def test_missing_and_unreadable_models_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.pdb"
    with pytest.raises(FileNotFoundError, match=r"nothere\.pdb"):
        model_to_map(missing, pixel_size_A=1.0, box_size_px=16)
    junk = tmp_path / "junk.cif"
    junk.write_text("this is not a model\n")
    with pytest.raises(ValueError, match=r"junk\.cif"):
        model_to_map(junk, pixel_size_A=1.0, box_size_px=16)
    with pytest.raises(ValueError, match="unknown shipped model"):
        shipped_model_path("nonexistent")


def test_model_larger_than_box_warns() -> None:
    with pytest.warns(UserWarning, match="wraps around"):
        model_to_map(shipped_model_path(), pixel_size_A=2.0, box_size_px=32)
