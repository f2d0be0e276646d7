"""cryoSPARC ``.cs`` particle files <-> :class:`~cryostack.core.datamodel.ItemSet`.

A ``.cs`` file is a NumPy structured array (``numpy.load``). Conversions at the boundary:

- ``blob/path`` (a leading ``>`` marks a project-relative path) resolved against ``root``,
  ``blob/idx`` -> ``image_index`` (both 0-based);
- ``ctf/df1_A``, ``df2_A``, ``df_angle_rad`` -> ``defocus_u_A``, ``defocus_v_A``,
  ``defocus_angle_deg`` (df1 is RELION's DefocusU: checked on EMPIAR-10076 files written by both);
  ``ctf/phase_shift_rad`` -> degrees;
- ``location/center_x_frac``, ``center_y_frac`` times ``location/micrograph_shape`` (y, x) ->
  ``coord_x_px``, ``coord_y_px``;
- ``alignments3D/pose`` (axis-angle, radians) -> RELION rot/tilt/psi through
  :func:`cryostack.em.rotations.cryosparc_pose_to_matrix`; ``alignments2D/pose`` (in-plane angle,
  radians) -> ``psi_deg``;
- ``alignments*/shift`` (pixels of ``alignments*/psize_A``) -> ``origin_x_A``, ``origin_y_A`` with
  the same sign (as pyem's csparc2star: rlnOrigin = shift);
- ``alignments*/split`` 0/1 -> ``random_subset`` 1/2; ``alignments*/class`` -> ``class_id`` + 1.

Other fields are kept as ``cs:<field>`` columns and written back by :func:`write_cs`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cryostack.core.datamodel import SET_COLUMNS, ItemSet, OpticsGroup, SetKind
from cryostack.em.rotations import (
    cryosparc_pose_to_matrix,
    euler_to_matrix,
    matrix_to_cryosparc_pose,
    matrix_to_euler,
)
from cryostack.io.errors import FormatError
from cryostack.io.mrc import atomic_path

EXTRA_PREFIX = "cs:"
REQUIRED_FIELDS = ("blob/path", "blob/idx")
# Fields converted into cryostack columns (everything else becomes a cs: column).
CONVERTED_FIELDS = {
    "blob/path",
    "blob/idx",
    "blob/psize_A",
    "blob/shape",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
    "ctf/phase_shift_rad",
    "ctf/bfactor",
    "ctf/scale",
    "location/center_x_frac",
    "location/center_y_frac",
    "location/micrograph_path",
    "location/micrograph_shape",
    *(
        f"{a}/{f}"
        for a in ("alignments3D", "alignments2D")
        for f in ("pose", "shift", "split", "class", "psize_A")
    ),
}


def _strings(values: np.ndarray) -> list[str]:
    """Byte strings -> str with cryoSPARC's leading '>' (project-relative marker) removed."""
    out = []
    for v in values:
        text = v.decode("utf-8") if isinstance(v, bytes) else str(v)
        out.append(text[1:] if text.startswith(">") else text)
    return out


def _exact(value: Any) -> float:
    """A float32 value as the decimal it was written from (2.95f -> 2.95, not 2.9500000477)."""
    return float(str(np.float32(value)))


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError/OSError/EOFError for non-.npy files
        raise FormatError(path, f"not a cryoSPARC .cs (NumPy) file: {err}") from None
    if not isinstance(data, np.ndarray) or data.dtype.names is None:
        raise FormatError(path, "not a cryoSPARC .cs file: not a structured array")
    missing = [f for f in REQUIRED_FIELDS if f not in data.dtype.names]
    if missing:
        raise FormatError(path, f"particles need field(s) {', '.join(missing)}")
    return data


def _optics(path: Path, data: np.ndarray) -> tuple[list[OpticsGroup], np.ndarray]:
    """One optics group per distinct (exposure group, kV, Cs, Q0, pixel size, box)."""
    names = set(data.dtype.names or ())
    n = len(data)

    def field(name: str, default: float) -> np.ndarray:
        return data[name].astype(np.float64) if name in names else np.full(n, default)

    if "blob/psize_A" not in names:
        raise FormatError(path, "particles need field blob/psize_A")
    box = data["blob/shape"][:, -1].astype(np.float64) if "blob/shape" in names else np.zeros(n)
    keys = np.stack(
        [
            field("ctf/exp_group_id", -1),
            field("ctf/accel_kv", 300.0),
            field("ctf/cs_mm", 2.7),
            field("ctf/amp_contrast", 0.1),
            field("blob/psize_A", 0.0),
            box,
        ],
        axis=1,
    )
    unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    groups = []
    for i, j in enumerate(order):
        exp_group, kv, cs, q0, psize, size = unique[j]
        groups.append(
            OpticsGroup.model_validate(
                {
                    "optics_group": i + 1,
                    "name": f"exp_group{int(exp_group)}"
                    if exp_group >= 0
                    else f"opticsGroup{i + 1}",
                    "voltage_kV": _exact(kv),
                    "cs_mm": _exact(cs),
                    "amplitude_contrast": _exact(q0),
                    "pixel_size_A": _exact(psize),
                    "image_size_px": int(size) if size > 0 else None,
                }
            )
        )
    return groups, (rank[inverse.reshape(-1)] + 1).astype(np.int32)


def _alignment_columns(data: np.ndarray, blob_psize: np.ndarray) -> dict[str, np.ndarray]:
    names = set(data.dtype.names or ())
    out: dict[str, np.ndarray] = {}
    slot = next((s for s in ("alignments3D", "alignments2D") if f"{s}/pose" in names), None)
    if slot is None:
        return out
    pose = data[f"{slot}/pose"].astype(np.float64)
    if slot == "alignments3D":
        matrices = cryosparc_pose_to_matrix(torch.from_numpy(pose))
        euler = matrix_to_euler(matrices).numpy()
        out["rot_deg"], out["tilt_deg"], out["psi_deg"] = euler[:, 0], euler[:, 1], euler[:, 2]
    else:
        out["psi_deg"] = (np.rad2deg(pose.reshape(-1)) + 180.0) % 360.0 - 180.0
    if f"{slot}/shift" in names:
        psize_field = f"{slot}/psize_A"
        psize = data[psize_field].astype(np.float64) if psize_field in names else blob_psize
        shift = data[f"{slot}/shift"].astype(np.float64)
        out["origin_x_A"] = shift[:, 0] * psize
        out["origin_y_A"] = shift[:, 1] * psize
    if f"{slot}/split" in names:
        out["random_subset"] = data[f"{slot}/split"].astype(np.int64) + 1
    if f"{slot}/class" in names:
        out["class_id"] = data[f"{slot}/class"].astype(np.int64) + 1
    return out


def _extra_column(values: np.ndarray) -> pa.Array:
    if values.dtype.kind == "S":
        return pa.array([v.decode("utf-8", errors="replace") for v in values], pa.string())
    if values.ndim > 1:
        width = int(np.prod(values.shape[1:]))
        flat = pa.array(values.reshape(len(values) * width))
        return pa.FixedSizeListArray.from_arrays(flat, width)
    return pa.array(values)


def read_cs(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> ItemSet:
    """Read a cryoSPARC particle ``.cs`` file.

    Args:
        path: the ``.cs`` file.
        root: cryoSPARC project directory that ``blob/path`` is relative to (default: the
            ``.cs`` file's folder).

    Returns:
        A particle ItemSet (see the module docstring for the conversions); optics groups are one
        per distinct exposure group / voltage / Cs / Q0 / pixel size / box.

    Raises:
        FormatError: not a NumPy structured array, or no ``blob/path`` / ``blob/idx``.
    """
    p = Path(path)
    data = _load(p)
    names = set(data.dtype.names or ())
    base = os.path.abspath(root if root is not None else p.parent)
    resolved: dict[str, str] = {}
    for rel in dict.fromkeys(_strings(data["blob/path"])):
        resolved[rel] = rel if os.path.isabs(rel) else os.path.normpath(os.path.join(base, rel))
    optics, group_ids = _optics(p, data)
    cols: dict[str, Any] = {
        "image_path": [resolved[s] for s in _strings(data["blob/path"])],
        "image_index": data["blob/idx"].astype(np.int64),
        "optics_group": group_ids,
    }
    if "ctf/df1_A" in names:
        cols["defocus_u_A"] = data["ctf/df1_A"].astype(np.float64)
        cols["defocus_v_A"] = data["ctf/df2_A"].astype(np.float64)
        cols["defocus_angle_deg"] = np.rad2deg(data["ctf/df_angle_rad"].astype(np.float64))
    if "ctf/phase_shift_rad" in names:
        cols["phase_shift_deg"] = np.rad2deg(data["ctf/phase_shift_rad"].astype(np.float64))
    if "ctf/bfactor" in names:
        cols["ctf_bfactor_A2"] = data["ctf/bfactor"].astype(np.float64)
    if "ctf/scale" in names:
        cols["ctf_scale"] = data["ctf/scale"].astype(np.float64)
    if "location/micrograph_path" in names:
        cols["micrograph_name"] = _strings(data["location/micrograph_path"])
    if "location/center_x_frac" in names and "location/micrograph_shape" in names:
        shape_yx = data["location/micrograph_shape"].astype(np.float64)
        cols["coord_x_px"] = data["location/center_x_frac"].astype(np.float64) * shape_yx[:, 1]
        cols["coord_y_px"] = data["location/center_y_frac"].astype(np.float64) * shape_yx[:, 0]
    cols.update(_alignment_columns(data, data["blob/psize_A"].astype(np.float64)))
    spec = SET_COLUMNS[SetKind.PARTICLES]
    arrays = {k: pa.array(v).cast(pa.type_for_alias(spec[k][0])) for k, v in cols.items()}
    for name in data.dtype.names or ():
        if name not in CONVERTED_FIELDS:
            arrays[EXTRA_PREFIX + name] = _extra_column(data[name])
    meta = {"source": str(p), "cryosparc_fields": list(data.dtype.names or ())}
    return ItemSet(SetKind.PARTICLES, pa.table(arrays), optics, meta)


# ---------------------------------------------------------------------------------------------
# Writing


def _column(item_set: ItemSet, name: str) -> np.ndarray | None:
    if name not in item_set.table.column_names:
        return None
    column = item_set.table.column(name)
    if column.null_count:
        return None
    return column.to_numpy()


def _relative(p: str, root: str) -> str:
    if not os.path.isabs(p):
        return p
    rel = os.path.relpath(p, root)
    return p if rel == ".." or rel.startswith(".." + os.sep) else rel


def write_cs(
    item_set: ItemSet, path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> None:
    """Write a particle ItemSet as a cryoSPARC ``.cs`` file (atomically).

    Writes ``uid`` (kept from ``cs:uid`` or numbered), ``blob/*``, ``ctf/*`` and
    ``alignments3D/*`` (when the set has poses; shifts in pixels of the particle images) plus the
    ``cs:`` columns. Paths inside ``root`` (default: the file's folder) are written relative to it.
    """
    p = Path(path)
    missing = item_set.missing_columns()
    if missing or item_set.kind != SetKind.PARTICLES:
        raise FormatError(p, f"write_cs needs particles with column(s) {', '.join(missing) or '-'}")
    base = os.path.abspath(root if root is not None else p.parent)
    n = len(item_set)
    by_id = item_set.optics_by_id()
    group_ids = item_set.table.column("optics_group").to_pylist()
    unknown = sorted(set(group_ids) - set(by_id))
    if unknown:
        raise FormatError(p, f"optics group(s) {unknown} have no OpticsGroup in the set")
    groups = [by_id[i] for i in group_ids]
    psize = np.array([g.pixel_size_A for g in groups], dtype=np.float32)
    paths = [
        _relative(str(s), base).encode() for s in item_set.table.column("image_path").to_pylist()
    ]
    fields: dict[str, np.ndarray] = {
        "uid": _column(item_set, "cs:uid")
        if "cs:uid" in item_set.table.column_names
        else np.arange(n, dtype=np.uint64),  # type: ignore[dict-item]
        "blob/path": np.array(paths, dtype=f"S{max([len(x) for x in paths] + [1])}"),
        "blob/idx": np.asarray(item_set.table.column("image_index").to_numpy(), dtype=np.uint32),
        "blob/psize_A": psize,
        "ctf/accel_kv": np.array([g.voltage_kV for g in groups], dtype=np.float32),
        "ctf/cs_mm": np.array([g.cs_mm for g in groups], dtype=np.float32),
        "ctf/amp_contrast": np.array([g.amplitude_contrast for g in groups], dtype=np.float32),
    }
    sizes = [g.image_size_px for g in groups]
    if all(s is not None for s in sizes):
        fields["blob/shape"] = np.array([[s, s] for s in sizes], dtype=np.uint32)
    simple = {
        "ctf/df1_A": ("defocus_u_A", 1.0),
        "ctf/df2_A": ("defocus_v_A", 1.0),
        "ctf/df_angle_rad": ("defocus_angle_deg", np.pi / 180),
        "ctf/phase_shift_rad": ("phase_shift_deg", np.pi / 180),
        "ctf/bfactor": ("ctf_bfactor_A2", 1.0),
        "ctf/scale": ("ctf_scale", 1.0),
    }
    for field, (column, factor) in simple.items():
        values = _column(item_set, column)
        if values is not None:
            fields[field] = (values.astype(np.float64) * factor).astype(np.float32)
    fields.update(_alignment_fields(item_set, psize))
    for name in item_set.table.column_names:
        field = name[len(EXTRA_PREFIX) :]
        if name.startswith(EXTRA_PREFIX) and field not in fields:
            fields[field] = _extra_values(item_set.table.column(name), n)
    dtype = [(k, v.dtype, v.shape[1:]) if v.ndim > 1 else (k, v.dtype) for k, v in fields.items()]
    out = np.zeros(n, dtype=dtype)
    for k, v in fields.items():
        out[k] = v
    with atomic_path(p) as tmp, open(tmp, "wb") as handle:
        np.save(handle, out)


def _alignment_fields(item_set: ItemSet, psize: np.ndarray) -> dict[str, np.ndarray]:
    """alignments3D/* when the set has rot/tilt/psi, alignments2D/* when it has psi only."""
    angles = [_column(item_set, c) for c in ("rot_deg", "tilt_deg", "psi_deg")]
    if angles[2] is None:
        return {}
    fields: dict[str, np.ndarray] = {}
    if angles[0] is not None and angles[1] is not None:
        slot = "alignments3D"
        euler = torch.from_numpy(np.stack(angles, axis=1).astype(np.float64))  # type: ignore[arg-type]
        pose = matrix_to_cryosparc_pose(euler_to_matrix(euler)).numpy()
    else:
        slot = "alignments2D"
        pose = np.deg2rad(angles[2].astype(np.float64))
    fields[f"{slot}/pose"] = pose.astype(np.float32)
    fields[f"{slot}/psize_A"] = psize
    ox, oy = _column(item_set, "origin_x_A"), _column(item_set, "origin_y_A")
    if ox is not None and oy is not None:
        shift = np.stack([ox, oy], axis=1) / psize[:, None]
        fields[f"{slot}/shift"] = shift.astype(np.float32)
    subset = _column(item_set, "random_subset")
    if subset is not None:
        fields[f"{slot}/split"] = np.clip(subset.astype(np.int64) - 1, 0, 1).astype(np.uint32)
    class_id = _column(item_set, "class_id")
    if class_id is not None:
        fields[f"{slot}/class"] = np.clip(class_id.astype(np.int64) - 1, 0, None).astype(np.uint32)
    return fields


def _extra_values(column: pa.ChunkedArray, n: int) -> np.ndarray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        encoded = [str(v).encode() for v in column.to_pylist()]
        return np.array(encoded, dtype=f"S{max([len(x) for x in encoded] + [1])}")
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(n, width)
    return column.to_numpy()
