"""The EM data model: optics groups, item-set kinds and their columns, single-file outputs.

Item sets (movies, micrographs, coordinates, particles, 2D classes) are tables, one row per item,
stored columnar (see :mod:`cryostack.core.sets`). Column names carry their unit. Conventions follow
RELION (../shared/em-conventions.md): defocus in Å, positive = underfocus; angles in degrees;
``origin_x_A``/``origin_y_A`` are RELION's rlnOriginXAngst/YAngst, so the particle's centre in the
micrograph is ``coord_x_px - origin_x_A / pixel_size_A``; coordinates are micrograph pixels with
the origin at the top-left of the stored array (x = column, y = row). Paths in a set are relative
to the project folder when they are inside it, absolute otherwise. Image indices are 0-based
(RELION's ``000123@stack.mrcs`` is 1-based: converted at the boundary).

The CTF sign follows RELION: CTF(s) = -sin(gamma(s)), CTF(0) = +Q0, and particle images are stored
with RELION's contrast (protein white).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field


class OpticsGroup(BaseModel):
    """Acquisition values shared by the items of one optics group (RELION's data_optics row)."""

    optics_group: int = Field(1, ge=1, description="1-based optics group number")
    name: str = Field("opticsGroup1", description="optics group name")
    voltage_kV: float = Field(300.0, gt=0, description="acceleration voltage in kV")
    cs_mm: float = Field(2.7, ge=0, description="spherical aberration in mm")
    amplitude_contrast: float = Field(0.1, ge=0, lt=1, description="amplitude contrast Q0")
    pixel_size_A: float = Field(..., gt=0, description="pixel size of the items in this set (Å/px)")
    micrograph_pixel_size_A: float | None = Field(
        None, gt=0, description="pixel size of the micrographs particles came from (Å/px)"
    )
    image_size_px: int | None = Field(None, gt=0, description="box size of particle images")
    dose_per_frame_e_A2: float | None = Field(None, ge=0, description="dose per movie frame")
    gain_reference_path: str | None = Field(None, description="gain reference (MRC/TIFF)")
    beam_tilt_x_mrad: float = 0.0
    beam_tilt_y_mrad: float = 0.0


class SetKind(StrEnum):
    """Kinds of item sets; the value is the output type name stored in the project."""

    MOVIES = "MovieSet"
    MICROGRAPHS = "MicrographSet"
    COORDINATES = "CoordinateSet"
    PARTICLES = "ParticleSet"
    CLASSES_2D = "Class2DSet"


class FileKind(StrEnum):
    """Kinds of single-file outputs; the value is the output type name stored in the project."""

    VOLUME = "Volume"
    MASK = "Mask"
    FSC_CURVE = "FSCCurve"
    LOCAL_RESOLUTION = "LocalResolutionMap"
    IMAGE = "Image"
    TABLE = "Table"


# Columns by set kind: name -> (arrow type name, description). "required" columns must be present.
CTF_COLUMNS: dict[str, tuple[str, str]] = {
    "defocus_u_A": ("float64", "defocus along the major axis, Å, positive = underfocus"),
    "defocus_v_A": ("float64", "defocus along the minor axis, Å"),
    "defocus_angle_deg": ("float64", "astigmatism angle from the X axis, degrees"),
    "phase_shift_deg": ("float64", "phase-plate shift, degrees"),
    "ctf_bfactor_A2": ("float64", "CTF B-factor envelope, Å²"),
    "ctf_scale": ("float64", "CTF scale factor"),
    "ctf_fit_resolution_A": ("float64", "resolution to which the CTF fit holds, Å"),
    "ctf_fit_score": ("float64", "CTF fit quality (cross-correlation)"),
}

POSE_COLUMNS: dict[str, tuple[str, str]] = {
    "rot_deg": ("float64", "RELION rlnAngleRot (ZYZ Euler phi), degrees"),
    "tilt_deg": ("float64", "RELION rlnAngleTilt (ZYZ Euler theta), degrees"),
    "psi_deg": ("float64", "RELION rlnAnglePsi (ZYZ Euler psi), degrees"),
    "origin_x_A": ("float64", "RELION rlnOriginXAngst, Å"),
    "origin_y_A": ("float64", "RELION rlnOriginYAngst, Å"),
}

SET_COLUMNS: dict[SetKind, dict[str, tuple[str, str]]] = {
    SetKind.MOVIES: {
        "movie_path": ("string", "movie file (MRC/TIFF stack of frames)"),
        "optics_group": ("int32", "optics group number"),
        "n_frames": ("int32", "number of frames"),
    },
    SetKind.MICROGRAPHS: {
        "micrograph_path": ("string", "micrograph file (MRC)"),
        "micrograph_name": ("string", "identifier joining coordinates and particles"),
        "optics_group": ("int32", "optics group number"),
        "movie_path": ("string", "movie the micrograph was aligned from"),
        **CTF_COLUMNS,
    },
    SetKind.COORDINATES: {
        "micrograph_name": ("string", "micrograph the pick is on"),
        "coord_x_px": ("float64", "x (column) in micrograph pixels"),
        "coord_y_px": ("float64", "y (row) in micrograph pixels"),
        "score": ("float64", "picking score"),
    },
    SetKind.PARTICLES: {
        "image_path": ("string", "MRC stack holding the particle image"),
        "image_index": ("int64", "0-based index of the image in its stack"),
        "micrograph_name": ("string", "micrograph the particle came from"),
        "coord_x_px": ("float64", "x (column) in micrograph pixels"),
        "coord_y_px": ("float64", "y (row) in micrograph pixels"),
        "optics_group": ("int32", "optics group number"),
        **CTF_COLUMNS,
        **POSE_COLUMNS,
        "random_subset": ("int32", "gold-standard half set, 1 or 2 (0 = unassigned)"),
        "class_id": ("int32", "class number, 1-based (0 = unassigned)"),
        "norm_correction": ("float64", "RELION rlnNormCorrection"),
        "log_likelihood": ("float64", "RELION rlnLogLikeliContribution"),
        "max_probability": ("float64", "RELION rlnMaxValueProbDistribution"),
    },
    SetKind.CLASSES_2D: {
        "image_path": ("string", "MRC stack of class averages"),
        "image_index": ("int64", "0-based index of the average in its stack"),
        "class_id": ("int32", "class number, 1-based"),
        "n_particles": ("int64", "particles assigned to the class"),
        "resolution_A": ("float64", "estimated resolution of the average, Å"),
    },
}

REQUIRED_COLUMNS: dict[SetKind, tuple[str, ...]] = {
    SetKind.MOVIES: ("movie_path", "optics_group"),
    SetKind.MICROGRAPHS: ("micrograph_path", "micrograph_name", "optics_group"),
    SetKind.COORDINATES: ("micrograph_name", "coord_x_px", "coord_y_px"),
    SetKind.PARTICLES: ("image_path", "image_index", "optics_group"),
    SetKind.CLASSES_2D: ("image_path", "image_index", "class_id"),
}


@dataclass
class ItemSet:
    """A set of items in memory: a columnar table plus its optics groups and free metadata.

    ``table`` has one row per item with columns from :data:`SET_COLUMNS` (others are allowed and
    kept); ``optics`` lists the optics groups referenced by the ``optics_group`` column; ``meta``
    holds JSON-serialisable extras (e.g. the source file a set was imported from).
    """

    kind: SetKind
    table: pa.Table
    optics: list[OpticsGroup] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.table.num_rows

    def optics_by_id(self) -> dict[int, OpticsGroup]:
        return {g.optics_group: g for g in self.optics}

    def missing_columns(self) -> list[str]:
        """Required columns of this kind that the table lacks."""
        return [c for c in REQUIRED_COLUMNS[self.kind] if c not in self.table.column_names]
