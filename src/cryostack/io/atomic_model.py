"""Atomic models (PDB / mmCIF) to density maps, through gemmi's electron form factors.

The map is the electrostatic (Coulomb) potential of the model computed with the electron
scattering factors of the International Tables vol. C, table 4.3.2.2 (Peng's five-Gaussian fits),
as implemented by :class:`gemmi.DensityCalculatorE`. Values are in the units of those form
factors per volume, Å⁻² (sum of f_e over Å³); multiply by 47.878 V·Å² to get volts. The integral
of the map (``map.sum() * pixel_size_A**3``) is the sum of f_e(0) over atoms (times occupancy).

Sampling: atoms are much sharper than a 2-4 Å voxel, so point-sampling them would alias. The
density is computed on a grid ``oversampling`` times finer with an extra Gaussian blur that makes
it well sampled there, Fourier transformed, un-blurred, cropped to the Nyquist frequency of the
requested voxel size and transformed back: the result is the model's potential band-limited to
the output grid, sampled at the voxel centres.

Layout: ``(D, H, W)`` = (z, y, x) as in ``mrcfile`` (``data[z, y, x]``); the voxel with index
``i`` along an axis sits at ``i * pixel_size_A`` Å.
"""

from __future__ import annotations

import math
import warnings
from importlib import resources
from pathlib import Path

import gemmi
import numpy as np
import torch

#: Models shipped in ``cryostack/data``: short name -> file name (see data/README.md).
SHIPPED_MODELS: dict[str, str] = {
    "trpv1": "trpv1_3j5p.pdb.gz",
}

#: Conversion from gemmi's electron density units (Å⁻²) to volts (h² / (2π m_e e) in V·Å²).
VOLTS_PER_FORM_FACTOR_DENSITY = 47.878


def shipped_model_path(name: str = "trpv1") -> Path:
    """Path of an atomic model shipped in ``cryostack/data``.

    Args:
        name: short name (a key of :data:`SHIPPED_MODELS`, e.g. ``"trpv1"``) or the file name.

    Returns:
        Path to the (gzipped PDB) file; gemmi and :func:`model_to_map` read it directly.
    """
    file_name = SHIPPED_MODELS.get(name, name)
    if file_name not in SHIPPED_MODELS.values():
        raise ValueError(
            f"unknown shipped model {name!r}; available: {', '.join(sorted(SHIPPED_MODELS))}"
        )
    path = Path(str(resources.files("cryostack").joinpath("data", file_name)))
    if not path.is_file():
        raise FileNotFoundError(f"shipped model file is missing from the installation: {path}")
    return path


def read_model(path: str | Path) -> gemmi.Structure:
    """Read a PDB or mmCIF model (optionally gzipped), expanding strict NCS when not given.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: gemmi cannot parse it or it holds no atoms; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"atomic model not found: {path}")
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"cannot read atomic model {path}: {exc}") from exc
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise ValueError(f"atomic model {path} contains no atoms")
    if any(not op.given for op in structure.ncs):
        structure.expand_ncs(gemmi.HowToNameCopiedChain.Short)
    return structure


def model_centre_of_mass_A(path: str | Path) -> np.ndarray:
    """Mass- and occupancy-weighted centre of the first model, ``(3,)`` (x, y, z) in Å."""
    com = read_model(path)[0].calculate_center_of_mass()
    return np.array([com.x, com.y, com.z])


def _atom_positions_A(model: gemmi.Model) -> np.ndarray:
    """``(n_atoms, 3)`` (x, y, z) positions in Å."""
    return np.array([atom.pos.tolist() for chain in model for res in chain for atom in res])


def _min_b_iso(model: gemmi.Model) -> float:
    return min(atom.b_iso for chain in model for res in chain for atom in res)


def _density_on_fine_grid(
    model: gemmi.Model, size_px: int, spacing_A: float, blur_A2: float
) -> np.ndarray:
    """Blurred potential on a periodic cubic grid, ``(size_px,) * 3`` indexed (z, y, x)."""
    cell_A = size_px * spacing_A
    calc = gemmi.DensityCalculatorE()
    calc.grid.set_size(size_px, size_px, size_px)
    calc.grid.set_unit_cell(gemmi.UnitCell(cell_A, cell_A, cell_A, 90, 90, 90))
    calc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calc.blur = blur_A2
    calc.put_model_density_on_grid(model)
    # gemmi's grid is indexed [x, y, z]; cryostack volumes are [z, y, x].
    return np.array(calc.grid, copy=True).transpose(2, 1, 0)


def _fourier_crop_and_filter(
    fine: np.ndarray, box_size_px: int, spacing_A: float, bfactor_A2: float
) -> np.ndarray:
    """Multiply the FT of ``fine`` by exp(-B s²/4) and crop it to ``box_size_px`` (sinc resampling).

    ``bfactor_A2`` may be negative (un-blurring). Returns ``(box,) * 3`` float32 samples of the
    band-limited function at the coarse grid points (values keep their units).
    """
    size = fine.shape[0]
    spectrum = torch.fft.fftn(torch.from_numpy(fine.astype(np.float32)))
    keep = torch.from_numpy(np.fft.fftfreq(box_size_px, d=1.0 / box_size_px).astype(np.int64))
    keep = keep % size
    cropped = spectrum[keep][:, keep][:, :, keep]
    s = torch.fft.fftfreq(box_size_px, d=spacing_A * size / box_size_px, dtype=torch.float64)
    s2 = s[:, None, None] ** 2 + s[None, :, None] ** 2 + s[None, None, :] ** 2
    cropped = cropped * torch.exp(-bfactor_A2 * s2 / 4.0).to(cropped.dtype)
    scale = (box_size_px / size) ** 3
    coarse = torch.fft.ifftn(cropped).real * scale
    return coarse.numpy().astype(np.float32)


def model_to_map(
    path: str | Path,
    *,
    pixel_size_A: float,
    box_size_px: int,
    bfactor_A2: float = 0.0,
    centre: bool = True,
    oversampling: int = 2,
) -> np.ndarray:
    """Coulomb potential of an atomic model on a cubic grid.

    Args:
        path: PDB or mmCIF file (``.gz`` accepted); the first model is used, with the atoms'
            own B-factors and occupancies; strict NCS that is not given in the file is expanded.
        pixel_size_A: voxel size in Å.
        box_size_px: edge of the cubic box in voxels.
        bfactor_A2: extra isotropic blur B (Å²): the map's FT is multiplied by exp(-B s²/4).
        centre: put the model's centre of mass (atomic masses times occupancies, not the
            bounding box) at voxel ``box_size_px // 2`` on each axis, the cryostack/RELION
            origin. With ``centre=False`` the model's coordinates are used as they are, the
            point (0, 0, 0) Å at voxel 0 (how a model fitted into a map with zero origin lines
            up with that map).
        oversampling: factor of the intermediate fine grid (2 is accurate to ~1e-4).

    Returns:
        ``(box, box, box)`` float32 array indexed ``[z, y, x]``, in Å⁻² (see module docstring).
        The box is periodic: density of atoms outside it wraps around (a warning is issued).
    """
    if pixel_size_A <= 0 or box_size_px <= 0 or oversampling < 1:
        raise ValueError("pixel_size_A, box_size_px and oversampling must be positive")
    structure = read_model(path)
    model = structure[0]
    if centre:
        com = model.calculate_center_of_mass()
        shift = (box_size_px // 2) * pixel_size_A - np.array([com.x, com.y, com.z])
        model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*shift)))
    edge_A = box_size_px * pixel_size_A
    positions = _atom_positions_A(model)
    if positions.min() < 0 or positions.max() >= edge_A:
        warnings.warn(
            f"atomic model {path} extends beyond the {edge_A:.1f} Å box; "
            "its density wraps around the periodic box",
            stacklevel=2,
        )
    fine_spacing_A = pixel_size_A / oversampling
    # Refmac's rule: total B >= 8π²/1.1 · spacing² makes the Gaussians well sampled on the grid.
    blur_A2 = max(0.0, 8 * math.pi**2 / 1.1 * fine_spacing_A**2 - _min_b_iso(model))
    fine = _density_on_fine_grid(model, box_size_px * oversampling, fine_spacing_A, blur_A2)
    return _fourier_crop_and_filter(fine, box_size_px, fine_spacing_A, bfactor_A2 - blur_A2)
