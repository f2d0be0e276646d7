"""RELION STAR files <-> :class:`~cryostack.core.datamodel.ItemSet` (reading through ``starfile``).

Reads particles, micrographs, movies and coordinate files written by RELION 3.0 (no optics table;
voltage, Cs and pixel size per row), 3.1 (``data_optics``, ``# version 30001``) and 5
(``# version 50001``). The RELION <-> cryostack column mapping is the single table
:data:`RELION_COLUMNS` (and :data:`OPTICS_COLUMNS` for ``data_optics``). Columns without a mapping
are kept as ``rln:<label>`` columns (optics ones in ``meta["relion_optics_extra"]``) and written
back on export.

Paths: RELION paths are relative to the RELION project directory (``root``; default the STAR
file's folder). On import they are resolved against ``root`` (absolute paths are kept as given);
on export, paths inside ``root`` are written relative to it. ``000123@stack.mrcs`` becomes
``image_path`` = the stack and ``image_index`` = 122 (0-based).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import starfile

from cryostack.core.datamodel import SET_COLUMNS, ItemSet, OpticsGroup, SetKind
from cryostack.io.errors import FormatError, FormatWarning
from cryostack.io.mrc import atomic_path


class ColumnMap(NamedTuple):
    """One RELION label and the cryostack column it maps to.

    ``convert``: "value" (copied), "path" (resolved against root / relativised on export),
    "image" (``000123@stack`` <-> image_path + 0-based image_index), "px" (legacy pixels,
    multiplied by the pixel size on import). ``kinds``: set kinds it applies to (empty = all).
    """

    rln: str
    column: str
    convert: str = "value"
    kinds: tuple[SetKind, ...] = ()


_P, _MIC, _MOV, _CO = SetKind.PARTICLES, SetKind.MICROGRAPHS, SetKind.MOVIES, SetKind.COORDINATES

RELION_COLUMNS: tuple[ColumnMap, ...] = (
    ColumnMap("rlnImageName", "image_path+image_index", "image", (_P, SetKind.CLASSES_2D)),
    ColumnMap("rlnMicrographMovieName", "movie_path", "path"),
    ColumnMap("rlnMicrographName", "micrograph_path", "path", (_MIC,)),
    ColumnMap("rlnMicrographName", "micrograph_name", "value", (_P, _CO)),
    ColumnMap("rlnCoordinateX", "coord_x_px"),
    ColumnMap("rlnCoordinateY", "coord_y_px"),
    ColumnMap("rlnAutopickFigureOfMerit", "score"),
    ColumnMap("rlnOpticsGroup", "optics_group"),
    ColumnMap("rlnDefocusU", "defocus_u_A"),
    ColumnMap("rlnDefocusV", "defocus_v_A"),
    ColumnMap("rlnDefocusAngle", "defocus_angle_deg"),
    ColumnMap("rlnPhaseShift", "phase_shift_deg"),
    ColumnMap("rlnCtfBfactor", "ctf_bfactor_A2"),
    ColumnMap("rlnCtfScalefactor", "ctf_scale"),
    ColumnMap("rlnCtfMaxResolution", "ctf_fit_resolution_A"),
    ColumnMap("rlnCtfFigureOfMerit", "ctf_fit_score"),
    ColumnMap("rlnAngleRot", "rot_deg"),
    ColumnMap("rlnAngleTilt", "tilt_deg"),
    ColumnMap("rlnAnglePsi", "psi_deg"),
    ColumnMap("rlnOriginXAngst", "origin_x_A"),
    ColumnMap("rlnOriginYAngst", "origin_y_A"),
    ColumnMap("rlnOriginX", "origin_x_A", "px"),
    ColumnMap("rlnOriginY", "origin_y_A", "px"),
    ColumnMap("rlnRandomSubset", "random_subset"),
    ColumnMap("rlnClassNumber", "class_id"),
    ColumnMap("rlnNormCorrection", "norm_correction"),
    ColumnMap("rlnLogLikeliContribution", "log_likelihood"),
    ColumnMap("rlnMaxValueProbDistribution", "max_probability"),
    ColumnMap("rlnClassDistribution", "n_particles", "value", (SetKind.CLASSES_2D,)),
    ColumnMap("rlnEstimatedResolution", "resolution_A", "value", (SetKind.CLASSES_2D,)),
)

# data_optics <-> OpticsGroup fields. The pixel-size label depends on the set kind.
OPTICS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rlnOpticsGroup", "optics_group"),
    ("rlnOpticsGroupName", "name"),
    ("rlnVoltage", "voltage_kV"),
    ("rlnSphericalAberration", "cs_mm"),
    ("rlnAmplitudeContrast", "amplitude_contrast"),
    ("rlnImageSize", "image_size_px"),
    ("rlnBeamTiltX", "beam_tilt_x_mrad"),
    ("rlnBeamTiltY", "beam_tilt_y_mrad"),
)
PIXEL_SIZE_LABEL: dict[SetKind, str] = {
    SetKind.PARTICLES: "rlnImagePixelSize",
    SetKind.CLASSES_2D: "rlnImagePixelSize",
    SetKind.MICROGRAPHS: "rlnMicrographPixelSize",
    SetKind.MOVIES: "rlnMicrographOriginalPixelSize",
}
MICROGRAPH_PIXEL_LABEL = "rlnMicrographPixelSize"  # particles: pixel size of their micrographs
# Pre-3.1 per-row acquisition labels, folded into optics groups on import.
LEGACY_OPTICS_LABELS = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMagnification",
    "rlnDetectorPixelSize",
    "rlnPixelSize",
    "rlnImagePixelSize",
)
REQUIRED_LABELS: dict[SetKind, tuple[str, ...]] = {
    _P: ("rlnImageName",),
    _MIC: ("rlnMicrographName",),
    _MOV: ("rlnMicrographMovieName",),
    _CO: ("rlnCoordinateX", "rlnCoordinateY"),
    SetKind.CLASSES_2D: ("rlnImageName",),
}
EXTRA_PREFIX = "rln:"
VERSION_LINES = {"3.1": "# version 30001", "5": "# version 50001", "5.0": "# version 50001"}
BLOCK_NAMES = {_P: "particles", _MIC: "micrographs", _MOV: "movies", _CO: "coordinates"}
# Never parsed as numbers (micrograph names like "1" stay strings).
_STRING_LABELS = [
    *("rlnImageName", "rlnMicrographName", "rlnMicrographMovieName", "rlnOpticsGroupName"),
    *("rlnImageOriginalName", "rlnMicrographGainName", "rlnMicrographMetadata", "rlnCtfImage"),
    *("rlnMtfFileName", "rlnReferenceImage"),
]


def _maps_for(kind: SetKind) -> list[ColumnMap]:
    return [m for m in RELION_COLUMNS if not m.kinds or kind in m.kinds]


# ---------------------------------------------------------------------------------------------
# Reading


def _read_blocks(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=_STRING_LABELS)
    except Exception as err:  # starfile/pandas raise many types on malformed files
        raise FormatError(path, f"not a readable STAR file: {err}") from None
    return dict(blocks)


def _main_block(path: Path, blocks: dict[str, Any]) -> tuple[str, pd.DataFrame, SetKind]:
    """The item table of a STAR file and the kind of set it holds."""
    by_name = {"particles": _P, "micrographs": _MIC, "movies": _MOV}
    for name, kind in by_name.items():
        if isinstance(blocks.get(name), pd.DataFrame):
            return name, blocks[name], kind
    for name, block in blocks.items():
        if name == "optics" or not isinstance(block, pd.DataFrame):
            continue
        cols = set(block.columns)
        if "rlnImageName" in cols:
            return name, block, _P
        if "rlnCoordinateX" in cols and "rlnCoordinateY" in cols:
            return name, block, _CO
        if "rlnMicrographMovieName" in cols and "rlnMicrographName" not in cols:
            return name, block, _MOV
        if "rlnMicrographName" in cols:
            return name, block, _MIC
    raise FormatError(
        path,
        "no particle, micrograph, movie or coordinate table (needs rlnImageName, "
        f"rlnMicrographName, rlnMicrographMovieName or rlnCoordinateX/Y; blocks: {list(blocks)})",
    )


def _require(path: Path, frame: pd.DataFrame, labels: Iterable[str], what: str) -> None:
    missing = [c for c in labels if c not in frame.columns]
    if missing:
        raise FormatError(path, f"{what} lacks required column(s) {', '.join(missing)}")


def _plain(value: Any) -> Any:
    """numpy scalar -> Python scalar (JSON-serialisable meta)."""
    return value.item() if isinstance(value, np.generic) else value


def _optics_from_table(
    path: Path, optics: pd.DataFrame, kind: SetKind
) -> tuple[list[OpticsGroup], dict[str, dict[str, Any]]]:
    """OpticsGroups from data_optics, plus the unmapped optics columns per group id."""
    pixel_label = PIXEL_SIZE_LABEL.get(kind, "rlnImagePixelSize")
    if pixel_label not in optics.columns and kind == _MIC:
        pixel_label = "rlnMicrographOriginalPixelSize"
    _require(path, optics, ["rlnOpticsGroup", pixel_label], "data_optics")
    mapped = {label for label, _ in OPTICS_COLUMNS} | {pixel_label}
    if kind in (_P, SetKind.CLASSES_2D):
        mapped.add(MICROGRAPH_PIXEL_LABEL)
    groups: list[OpticsGroup] = []
    extras: dict[str, dict[str, Any]] = {}
    for row in optics.to_dict("records"):
        values = {field: row[label] for label, field in OPTICS_COLUMNS if label in row}
        values["pixel_size_A"] = row[pixel_label]
        if kind in (_P, SetKind.CLASSES_2D) and MICROGRAPH_PIXEL_LABEL in row:
            values["micrograph_pixel_size_A"] = row[MICROGRAPH_PIXEL_LABEL]
        if "name" in values:
            values["name"] = str(values["name"])
        try:
            group = OpticsGroup.model_validate({k: _plain(v) for k, v in values.items()})
        except ValueError as err:
            raise FormatError(path, f"invalid data_optics row {row}: {err}") from None
        groups.append(group)
        extras[str(group.optics_group)] = {
            str(k): _plain(v) for k, v in row.items() if k not in mapped
        }
    return groups, extras


def _legacy_pixel_sizes(path: Path, frame: pd.DataFrame, fallback: float | None) -> np.ndarray:
    """Per-row pixel size of a pre-3.1 file (Å/px)."""
    cols = frame.columns
    if "rlnImagePixelSize" in cols:
        return frame["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    if "rlnPixelSize" in cols:
        return frame["rlnPixelSize"].to_numpy(dtype=np.float64)
    if "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
        detector_um = frame["rlnDetectorPixelSize"].to_numpy(dtype=np.float64)
        return detector_um * 1e4 / frame["rlnMagnification"].to_numpy(dtype=np.float64)
    if fallback is not None:
        return np.full(len(frame), float(fallback))
    raise FormatError(
        path,
        "no pixel size: needs data_optics, rlnImagePixelSize, rlnPixelSize or "
        "rlnDetectorPixelSize + rlnMagnification (or pass pixel_size_A)",
    )


def _optics_from_rows(
    path: Path, frame: pd.DataFrame, pixel_size_A: float | None
) -> tuple[list[OpticsGroup], np.ndarray]:
    """Optics groups of a pre-3.1 file: one per distinct (voltage, Cs, Q0, pixel size)."""
    pixel = _legacy_pixel_sizes(path, frame, pixel_size_A)
    defaults = OpticsGroup.model_validate({"pixel_size_A": 1.0})
    per_row: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for label, field in (
        ("rlnVoltage", "voltage_kV"),
        ("rlnSphericalAberration", "cs_mm"),
        ("rlnAmplitudeContrast", "amplitude_contrast"),
    ):
        if label in frame.columns:
            per_row[field] = frame[label].to_numpy(dtype=np.float64)
        else:
            missing.append(f"{label} (using {getattr(defaults, field)})")
            per_row[field] = np.full(len(frame), float(getattr(defaults, field)))
    if missing:
        warnings.warn(
            f"{path}: no {', '.join(missing)}",
            FormatWarning,
            stacklevel=3,
        )
    keys = np.stack(
        [per_row["voltage_kV"], per_row["cs_mm"], per_row["amplitude_contrast"], pixel], 1
    )
    unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # number groups in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    groups = [
        OpticsGroup.model_validate(
            {
                "optics_group": i + 1,
                "name": f"opticsGroup{i + 1}",
                "voltage_kV": float(unique[j, 0]),
                "cs_mm": float(unique[j, 1]),
                "amplitude_contrast": float(unique[j, 2]),
                "pixel_size_A": float(unique[j, 3]),
            }
        )
        for i, j in enumerate(order)
    ]
    return groups, (rank[inverse.reshape(-1)] + 1).astype(np.int32)


def _resolver(root: str) -> Any:
    cache: dict[str, str] = {}

    def resolve(p: str) -> str:
        if p not in cache:
            cache[p] = p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p))
        return cache[p]

    return resolve


def _split_image_names(path: Path, names: pd.Series, root: str) -> tuple[list[str], np.ndarray]:
    """``000123@stack.mrcs`` -> (resolved stack paths, 0-based indices)."""
    resolve = _resolver(root)
    paths: list[str] = []
    indices = np.zeros(len(names), dtype=np.int64)
    for i, name in enumerate(names.astype(str)):
        number, at, stack = name.partition("@")
        if not at:
            number, stack = "1", name
        if not number.strip().isdigit() or int(number) < 1:
            raise FormatError(path, f"row {i + 1}: bad rlnImageName {name!r} (want 000123@stack)")
        indices[i] = int(number) - 1
        paths.append(resolve(stack))
    return paths, indices


def _arrow(values: Any, column: str, kind: SetKind) -> pa.Array:
    """Arrow array typed as the data model says for ``column`` (or inferred)."""
    spec = SET_COLUMNS[kind].get(column)
    if isinstance(values, pd.Series):
        values = values.to_numpy(dtype=str if values.dtype == object else None)
    array = pa.array(values)
    if spec is not None:
        return array.cast(pa.type_for_alias(spec[0]))
    if pa.types.is_large_string(array.type):
        return array.cast(pa.string())
    return array


def _table_from_frame(
    path: Path, frame: pd.DataFrame, kind: SetKind, root: str, pixel_per_row: np.ndarray | None
) -> dict[str, pa.Array]:
    columns: dict[str, pa.Array] = {}
    used: set[str] = set()
    for m in _maps_for(kind):
        if m.rln not in frame.columns:
            continue
        used.add(m.rln)
        series = frame[m.rln]
        if m.convert == "image":
            paths, indices = _split_image_names(path, series, root)
            columns["image_path"] = _arrow(paths, "image_path", kind)
            columns["image_index"] = _arrow(indices, "image_index", kind)
        elif m.convert == "path":
            resolve = _resolver(root)
            columns[m.column] = _arrow([resolve(str(v)) for v in series], m.column, kind)
            if kind == _MIC and m.column == "micrograph_path":
                columns["micrograph_name"] = _arrow(series.astype(str), "micrograph_name", kind)
        elif m.convert == "px":
            if m.column in columns:  # rlnOriginXAngst wins
                continue
            if pixel_per_row is None:
                raise FormatError(path, f"{m.rln} is in pixels but the pixel size is unknown")
            columns[m.column] = _arrow(series.to_numpy(np.float64) * pixel_per_row, m.column, kind)
        else:
            columns[m.column] = _arrow(series, m.column, kind)
    for label in frame.columns:
        if label not in used:
            columns[EXTRA_PREFIX + label] = _arrow(frame[label], EXTRA_PREFIX + label, kind)
    return columns


def _star_version(path: Path) -> int | None:
    with open(path, errors="replace") as handle:
        for line in handle:
            text = line.strip()
            if text.startswith("#") and "version" in text:
                digits = "".join(ch for ch in text.split("version", 1)[1] if ch.isdigit())
                return int(digits) if digits else None
            if text.startswith("data_"):
                return None
    return None


def read_star(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    pixel_size_A: float | None = None,
) -> ItemSet:
    """Read a RELION particles / micrographs / movies / coordinates STAR file.

    Args:
        path: the STAR file (RELION 3.0, 3.1 or 5).
        root: RELION project directory the file's relative paths refer to (default: the STAR
            file's folder).
        pixel_size_A: pixel size (Å/px) to use when the file gives none (old files only).

    Returns:
        An ItemSet with cryostack columns, ``rln:<label>`` columns for unmapped labels, optics
        groups (from data_optics, or one per distinct voltage/Cs/Q0/pixel size in pre-3.1 files)
        and ``meta`` with the source file and RELION version.

    Raises:
        FormatError: not a STAR file, no item table, or missing required columns.
    """
    p = Path(path)
    blocks = _read_blocks(p)
    block, frame, kind = _main_block(p, blocks)
    _require(p, frame, REQUIRED_LABELS[kind], f"data_{block}")
    base = os.path.abspath(root if root is not None else p.parent)
    optics_frame = blocks.get("optics")
    meta: dict[str, Any] = {"source": str(p), "relion_block": block, "relion_version": None}
    meta["relion_version"] = _star_version(p)
    optics: list[OpticsGroup] = []
    pixel_per_row: np.ndarray | None = None
    if isinstance(optics_frame, pd.DataFrame):
        optics, extras = _optics_from_table(p, optics_frame, kind)
        meta["relion_optics_extra"] = extras
        by_id = {g.optics_group: g.pixel_size_A for g in optics}
        if "rlnOpticsGroup" not in frame.columns:
            if len(optics) != 1:
                raise FormatError(p, f"data_{block} lacks rlnOpticsGroup but there are several")
            frame = frame.assign(rlnOpticsGroup=optics[0].optics_group)
        ids = frame["rlnOpticsGroup"].to_numpy()
        unknown = sorted(set(ids.tolist()) - set(by_id))
        if unknown:
            raise FormatError(p, f"optics group(s) {unknown} used but not in data_optics")
        pixel_per_row = np.array([by_id[int(i)] for i in ids], dtype=np.float64)
    elif kind != _CO:
        optics, group_ids = _optics_from_rows(p, frame, pixel_size_A)
        pixel_per_row = np.array([optics[g - 1].pixel_size_A for g in group_ids])
        legacy = [c for c in LEGACY_OPTICS_LABELS if c in frame.columns]
        frame = frame.drop(
            columns=legacy + (["rlnOpticsGroup"] if "rlnOpticsGroup" in frame else [])
        )
        frame = frame.assign(rlnOpticsGroup=group_ids)
    elif pixel_size_A is not None:
        pixel_per_row = np.full(len(frame), float(pixel_size_A))
    columns = _table_from_frame(p, frame, kind, base, pixel_per_row)
    if kind == _CO and "micrograph_name" not in columns:
        columns["micrograph_name"] = pa.array([p.stem] * len(frame), pa.string())
    item_set = ItemSet(kind=kind, table=pa.table(columns), optics=optics, meta=meta)
    missing = item_set.missing_columns()
    if missing:
        raise FormatError(p, f"{kind.value} needs column(s) {', '.join(missing)}")
    return item_set


# ---------------------------------------------------------------------------------------------
# Writing


def _format(value: Any) -> str:
    """One STAR value: floats in their shortest exact form (repr), strings quoted if needed."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value)
    if not text or any(c.isspace() for c in text):
        return '"' + text.replace('"', "'") + '"'
    return text


def _loop(name: str, columns: Sequence[tuple[str, Sequence[Any]]], version_line: str | None) -> str:
    lines = [] if version_line is None else [version_line, ""]
    lines += [f"data_{name}", "", "loop_"]
    lines += [f"_{label} #{i + 1}" for i, (label, _) in enumerate(columns)]
    n = len(columns[0][1]) if columns else 0
    formatted = [[_format(v) for v in values] for _, values in columns]
    lines += [" ".join(col[r] for col in formatted) for r in range(n)]
    return "\n".join(lines) + "\n\n"


def _relativiser(root: str) -> Any:
    def relative(p: str) -> str:
        if not os.path.isabs(p):
            return p
        rel = os.path.relpath(p, root)
        return p if rel == ".." or rel.startswith(".." + os.sep) else rel

    return relative


def _column_values(path: Path, table: pa.Table, name: str) -> list[Any] | None:
    """Python values of a column; None when all null; FormatError when partly null."""
    column = table.column(name)
    if column.null_count == len(column) and len(column) > 0:
        return None
    if column.null_count:
        raise FormatError(path, f"column {name} has {column.null_count} missing values")
    return column.to_pylist()


def _item_columns(
    path: Path, item_set: ItemSet, root: str, legacy: bool
) -> list[tuple[str, list[Any]]]:
    table = item_set.table
    relative = _relativiser(root)
    out: list[tuple[str, list[Any]]] = []
    written: set[str] = set()
    for m in _maps_for(item_set.kind):
        if m.rln in written:
            continue
        if m.convert == "image":
            if "image_path" not in table.column_names:
                continue
            paths = _column_values(path, table, "image_path") or []
            indices = _column_values(path, table, "image_index") or []
            out.append(
                (m.rln, [f"{i + 1:06d}@{relative(p)}" for p, i in zip(paths, indices, strict=True)])
            )
        elif m.column in table.column_names and m.convert != "px":
            values = _column_values(path, table, m.column)
            if values is None:
                continue
            if m.convert == "path":
                values = [relative(str(v)) for v in values]
            label = m.rln
            if legacy and m.column in ("origin_x_A", "origin_y_A"):
                pixel = _row_pixel_sizes(path, item_set)
                label, values = label.replace("Angst", ""), list(np.asarray(values) / pixel)
            out.append((label, values))
        else:
            continue
        written.add(m.rln)
    for name in table.column_names:
        if name.startswith(EXTRA_PREFIX) and name[len(EXTRA_PREFIX) :] not in written:
            values = _column_values(path, table, name)
            if values is not None:
                out.append((name[len(EXTRA_PREFIX) :], values))
    return out


def _row_pixel_sizes(path: Path, item_set: ItemSet) -> np.ndarray:
    by_id = item_set.optics_by_id()
    ids = item_set.table.column("optics_group").to_pylist()
    missing = sorted(set(ids) - set(by_id))
    if missing:
        raise FormatError(path, f"optics group(s) {missing} have no OpticsGroup in the set")
    return np.array([by_id[i].pixel_size_A for i in ids], dtype=np.float64)


def _optics_columns(item_set: ItemSet) -> list[tuple[str, list[Any]]]:
    groups = sorted(item_set.optics, key=lambda g: g.optics_group)
    out: list[tuple[str, list[Any]]] = []
    for label, field in OPTICS_COLUMNS:
        values = [getattr(g, field) for g in groups]
        if any(v is None for v in values) or (field.startswith("beam_tilt") and not any(values)):
            continue
        out.append((label, values))
    out.append((PIXEL_SIZE_LABEL[item_set.kind], [g.pixel_size_A for g in groups]))
    mic_px = [g.micrograph_pixel_size_A for g in groups]
    if item_set.kind == _P and all(v is not None for v in mic_px):
        out.append((MICROGRAPH_PIXEL_LABEL, mic_px))
    extras: dict[str, dict[str, Any]] = item_set.meta.get("relion_optics_extra", {})
    per_group = [extras.get(str(g.optics_group), {}) for g in groups]
    written = {label for label, _ in out}
    labels = [k for k in per_group[0] if k not in written] if per_group else []
    for label in labels:
        if all(label in e for e in per_group):
            out.append((label, [e[label] for e in per_group]))
    if item_set.kind == _P and "rlnImageDimensionality" not in {label for label, _ in out}:
        out.append(("rlnImageDimensionality", [2] * len(groups)))
    return out


def _legacy_optics_columns(path: Path, item_set: ItemSet) -> list[tuple[str, list[Any]]]:
    """Per-row voltage, Cs, Q0 and pixel size (rlnDetectorPixelSize at magnification 10000)."""
    by_id = item_set.optics_by_id()
    groups = [by_id[i] for i in item_set.table.column("optics_group").to_pylist()]
    return [
        ("rlnVoltage", [g.voltage_kV for g in groups]),
        ("rlnSphericalAberration", [g.cs_mm for g in groups]),
        ("rlnAmplitudeContrast", [g.amplitude_contrast for g in groups]),
        ("rlnDetectorPixelSize", [g.pixel_size_A for g in groups]),
        ("rlnMagnification", [10000.0] * len(groups)),
    ]


def write_star(
    item_set: ItemSet,
    path: str | os.PathLike[str],
    version: str = "3.1",
    root: str | os.PathLike[str] | None = None,
) -> None:
    """Write an ItemSet as a RELION STAR file, atomically.

    Args:
        item_set: particles, micrographs, movies or coordinates.
        path: target STAR file.
        version: "3.1" (``# version 30001`` + data_optics), "5" (``# version 50001``) or "3.0"
            (particles only: no optics table, per-row voltage/Cs/Q0/pixel size, origins in px).
        root: folder RELION will run in; absolute paths inside it are written relative to it
            (default: the STAR file's folder). Relative paths in the set are written as they are.

    Raises:
        FormatError: required columns or optics groups missing, or partly missing values.
    """
    p = Path(path)
    if version not in ("3.0", *VERSION_LINES):
        raise ValueError(f"{p}: unknown RELION version {version!r} (want 3.0, 3.1 or 5)")
    missing = item_set.missing_columns()
    if missing:
        raise FormatError(
            p, f"cannot write {item_set.kind.value}: missing column(s) {', '.join(missing)}"
        )
    base = os.path.abspath(root if root is not None else p.parent)
    legacy = version == "3.0"
    if legacy and item_set.kind != _P:
        raise ValueError(f"{p}: RELION 3.0 export supports particles only")
    if item_set.kind != _CO:
        _row_pixel_sizes(p, item_set)  # every optics group used must be described
    items = _item_columns(p, item_set, base, legacy)
    if legacy:
        items = [c for c in items if c[0] != "rlnOpticsGroup"] + _legacy_optics_columns(p, item_set)
        text = _loop("", items, None)
    elif item_set.kind == _CO:
        text = _loop("", items, VERSION_LINES[version])
    else:
        optics = _loop("optics", _optics_columns(item_set), VERSION_LINES[version])
        text = optics + _loop(BLOCK_NAMES[item_set.kind], items, VERSION_LINES[version])
    with atomic_path(p) as tmp:
        tmp.write_text(text)
