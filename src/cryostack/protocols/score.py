"""``score``: compare a result with the ground truth of a ``simulate`` run (or any truth).

The scoring is chosen by the candidate's type (the truth must be of a matching type):

==========================================  =============================  ========================
candidate                                   truth                          metrics
==========================================  =============================  ========================
MicrographSet with CTF columns              MicrographSet with CTF         defocus errors, joined
                                                                           on ``micrograph_name``
CoordinateSet (or ParticleSet without       CoordinateSet or ParticleSet   precision/recall/F1 per
poses)                                      with coordinates               micrograph and overall
ParticleSet with poses                      ParticleSet with poses         pose error (deg, modulo
                                                                           ``symmetry``), shift
                                                                           error (Å)
Volume                                      Volume                         FSC, resolution at 0.5
                                                                           and 0.143
Table of drift                              Table of drift                 drift RMSE (px)
==========================================  =============================  ========================

Matching radius for picks and for joining particles on coordinates: ``match_radius_A``, by
default a quarter of the particle diameter (``particle_diameter_A`` in the truth's metadata, which
``simulate`` records). Candidate coordinates on micrographs of another pixel size are rescaled to
the truth's pixels. Particles are joined by ``pose_join``: ``order`` pairs row i with row i;
``coordinates`` pairs particles on the same micrograph whose centres (``coord - origin / pixel
size``) are within the radius (one to one, greedy by distance); ``auto`` uses coordinates when
both sets have them. Shift errors compare particle centres in the micrograph when both sets have
coordinates, else the origins.

Drift tables (Parquet, Arrow/Feather, CSV, JSON records or ``.npz``) have the columns
``micrograph_name``, ``frame``, ``shift_x_px``, ``shift_y_px`` (see :mod:`cryostack.protocols.
simulate`); the RMSE removes a constant offset (:func:`cryostack.em.scoring.drift_rmse_px`).

The ``report`` output is a JSON file: ``{"metric": ..., "summary": {...}, "per_item": [...]}``
(FSC curves under ``curve``). :func:`score_report` computes the same dict from Python without a
run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import torch

from cryostack.core.datamodel import FileKind, ItemSet, SetKind
from cryostack.core.project import InputLink, Project
from cryostack.core.protocol import (
    InputSpec,
    OutputSpec,
    OutputValue,
    Params,
    Protocol,
    RunContext,
    StepContext,
    StepSpec,
    atomic_path,
    param,
)
from cryostack.core.sets import read_set
from cryostack.em import scoring
from cryostack.em.symmetry import symmetry_matrices
from cryostack.io.mrc import read_mrc

SCORABLE_TYPES: tuple[str, ...] = (
    SetKind.MICROGRAPHS,
    SetKind.COORDINATES,
    SetKind.PARTICLES,
    FileKind.VOLUME,
    FileKind.TABLE,
)
DRIFT_COLUMNS = ("micrograph_name", "frame", "shift_x_px", "shift_y_px")
_EULER = ("rot_deg", "tilt_deg", "psi_deg")


class ScoreParams(Params):
    symmetry: str = param("C1", help="point group of the map (pose errors modulo it)")
    match_radius_A: float | None = param(
        None, help="pick/particle matching radius (default: 1/4 particle diameter)", unit="Å", gt=0
    )
    pose_join: Literal["auto", "order", "coordinates"] = param(
        "auto", help="how candidate particles are paired with the truth"
    )
    min_astigmatism_A: float = param(
        100.0, help="astigmatism angles are scored where the true U - V is at least this", unit="Å"
    )


class Score(Protocol):
    id = "score"
    name = "Score against ground truth"
    category = "Validation"
    help = (
        "Compares a result (CTF, picks, poses, map, drift) with the ground truth of a "
        "simulation and reports the errors."
    )
    Params = ScoreParams
    inputs = {
        "truth": InputSpec(SCORABLE_TYPES, "ground truth (e.g. a simulate run's truth output)"),
        "candidate": InputSpec(SCORABLE_TYPES, "the result to score"),
    }
    outputs = {"report": OutputSpec(FileKind.TABLE, "metrics (JSON)")}

    def check(self, ctx: RunContext) -> list[str]:
        assert isinstance(ctx.params, ScoreParams)
        try:
            symmetry_matrices(ctx.params.symmetry)
        except ValueError as exc:
            return [str(exc)]
        return []

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        return [StepSpec(key="score")]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        assert isinstance(ctx.params, ScoreParams)
        candidate = _Source.from_ref(ctx, ctx.input("candidate"))
        truth = _Source.from_ref(ctx, ctx.input("truth"))
        report = score_sources(candidate, truth, ctx.params)
        (ctx.work_dir / "report.json").write_text(_to_json(report))
        return {"metric": report["metric"], "summary": report["summary"]}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        target = ctx.output_path("report.json")
        with atomic_path(target) as tmp:
            tmp.write_bytes((ctx.step_dir("score") / "report.json").read_bytes())
        summary = results["score"]
        meta = {"metric": summary["metric"], "summary": summary["summary"]}
        return {"report": OutputValue(FileKind.TABLE, ctx.relative(target), 1, meta)}


# --------------------------------------------------------------------------------------------
# entry point from Python


def score_report(
    project: Project,
    candidate_ref: str | InputLink | tuple[int, str],
    truth_ref: str | InputLink | tuple[int, str],
    **params: Any,
) -> dict[str, Any]:
    """Score an output of a run against a truth output without launching a run.

    Args:
        project: the open project holding both outputs.
        candidate_ref, truth_ref: ``"RUN.OUTPUT"`` (e.g. ``"3.truth_micrographs"``), an
            :class:`~cryostack.core.project.InputLink` or ``(run_id, output_name)``.
        params: :class:`ScoreParams` values (``symmetry``, ``match_radius_A``...).

    Returns:
        The report dict (as in the ``report`` output of a ``score`` run).
    """
    settings = ScoreParams(**params)
    sources = []
    for ref in (candidate_ref, truth_ref):
        link = _link(ref)
        out = project.output(link.run_id, link.output)
        sources.append(_Source(out.type, project.path(out.path), dict(out.meta), out.path))
    return score_sources(sources[0], sources[1], settings)


def _link(ref: str | InputLink | tuple[int, str]) -> InputLink:
    if isinstance(ref, InputLink):
        return ref
    if isinstance(ref, tuple):
        return InputLink(int(ref[0]), ref[1])
    return InputLink.parse(ref)


@dataclass
class _Source:
    """An output to score: its type, absolute path, registered meta and a name for messages."""

    type: str
    path: Path
    meta: dict[str, Any]
    label: str

    @classmethod
    def from_ref(cls, ctx: RunContext, ref: Any) -> _Source:
        label = f"run {ref.source_run_id}.{ref.source_output}"
        return cls(ref.type, ctx.path(ref.path), dict(ref.meta), label)

    def item_set(self) -> ItemSet:
        return read_set(self.path)


def score_sources(candidate: _Source, truth: _Source, params: ScoreParams) -> dict[str, Any]:
    """Pick the scoring by the candidate's type and compute the report."""
    kind = candidate.type
    if kind == FileKind.VOLUME:
        _require_type(truth, (FileKind.VOLUME,), "a map")
        return _score_map(candidate, truth)
    if kind == FileKind.TABLE:
        _require_type(truth, (FileKind.TABLE,), "a drift table")
        return _score_drift(candidate, truth)
    cand = candidate.item_set()
    if kind == SetKind.MICROGRAPHS:
        if not _has_values(cand, "defocus_u_A"):
            raise ValueError(f"{candidate.label}: micrographs have no CTF columns to score")
        _require_type(truth, (SetKind.MICROGRAPHS,), "micrographs with the true CTF")
        return _score_ctf(cand, truth.item_set(), truth.label, params)
    _require_type(truth, (SetKind.COORDINATES, SetKind.PARTICLES), "coordinates or particles")
    true_set = truth.item_set()
    radius_A = _radius_A(params, true_set, truth)
    if kind == SetKind.PARTICLES and all(_has_values(cand, c) for c in _EULER):
        return _score_poses(cand, true_set, truth.label, params, radius_A)
    if not _has_values(cand, "coord_x_px"):
        raise ValueError(f"{candidate.label}: {kind} has neither poses nor coordinates to score")
    return _score_picks(cand, true_set, radius_A)


def _require_type(truth: _Source, types: tuple[str, ...], what: str) -> None:
    if truth.type not in types:
        raise ValueError(f"truth {truth.label} is a {truth.type}; scoring this needs {what}")


def _has_values(item_set: ItemSet, column: str) -> bool:
    table = item_set.table
    return column in table.column_names and table.column(column).null_count < table.num_rows


def _column(item_set: ItemSet, name: str) -> np.ndarray:
    return np.asarray(item_set.table.column(name).to_numpy(zero_copy_only=False))


def _radius_A(params: ScoreParams, truth: ItemSet, source: _Source) -> float:
    if params.match_radius_A is not None:
        return params.match_radius_A
    diameter = truth.meta.get("particle_diameter_A") or source.meta.get("particle_diameter_A")
    if not diameter:
        raise ValueError(f"truth {source.label} records no particle_diameter_A; set match_radius_A")
    return 0.25 * float(diameter)


def _micrograph_pixel_size_A(item_set: ItemSet) -> float:
    """Pixel size of the micrographs a set's coordinates refer to (Å)."""
    if not item_set.optics:
        raise ValueError(f"a {item_set.kind.value} without optics groups has no pixel size")
    group = item_set.optics[0]
    if item_set.kind == SetKind.PARTICLES and group.micrograph_pixel_size_A:
        return float(group.micrograph_pixel_size_A)
    return float(group.pixel_size_A)


def _centres_px(item_set: ItemSet, target_pixel_size_A: float) -> np.ndarray:
    """``(n, 2)`` particle centres in micrographs, in pixels of size ``target_pixel_size_A``.

    Particle sets subtract their origins (RELION: centre = coord - origin / pixel size).
    """
    px = _micrograph_pixel_size_A(item_set)
    xy = np.stack([_column(item_set, "coord_x_px"), _column(item_set, "coord_y_px")], axis=1)
    xy = xy.astype(np.float64)
    if item_set.kind == SetKind.PARTICLES and _has_values(item_set, "origin_x_A"):
        origin = np.stack([_column(item_set, "origin_x_A"), _column(item_set, "origin_y_A")], 1)
        xy = xy - np.nan_to_num(origin.astype(np.float64)) / px
    return xy * px / target_pixel_size_A


def _groups(item_set: ItemSet) -> dict[str, np.ndarray]:
    """Row indices by micrograph name, names sorted."""
    names = _column(item_set, "micrograph_name").astype(str)
    return {name: np.flatnonzero(names == name) for name in sorted(set(names.tolist()))}


# --------------------------------------------------------------------------------------------
# CTF


def _score_ctf(
    cand: ItemSet, truth: ItemSet, truth_label: str, params: ScoreParams
) -> dict[str, Any]:
    if not _has_values(truth, "defocus_u_A"):
        raise ValueError(f"truth {truth_label}: micrographs have no CTF columns")
    cand_rows = {n: int(i[0]) for n, i in _groups(cand).items()}
    true_rows = {n: int(i[0]) for n, i in _groups(truth).items()}
    names = sorted(set(cand_rows) & set(true_rows))
    columns = ("defocus_u_A", "defocus_v_A", "defocus_angle_deg")

    def values(item_set: ItemSet, rows: dict[str, int]) -> list[torch.Tensor]:
        index = np.array([rows[n] for n in names], dtype=np.int64)
        return [torch.from_numpy(_column(item_set, c).astype(np.float64)[index]) for c in columns]

    est, true = values(cand, cand_rows), values(truth, true_rows)
    errors = scoring.defocus_errors(*est, *true)
    astig = (true[0] - true[1]).abs()
    angle_scored = astig >= params.min_astigmatism_A
    per_item = [
        {
            "micrograph_name": name,
            "defocus_u_A": float(est[0][i]),
            "defocus_v_A": float(est[1][i]),
            "defocus_angle_deg": float(est[2][i]),
            "true_defocus_u_A": float(true[0][i]),
            "true_defocus_v_A": float(true[1][i]),
            "true_defocus_angle_deg": float(true[2][i]),
            "mean_defocus_error_A": float(errors.mean_defocus_error_A[i]),
            "mean_defocus_error_percent": float(errors.mean_defocus_error_percent[i]),
            "astigmatism_error_A": float(errors.astigmatism_error_A[i]),
            "angle_error_deg": float(errors.angle_error_deg[i]) if angle_scored[i] else None,
        }
        for i, name in enumerate(names)
    ]
    abs_error = errors.mean_defocus_error_A.abs()
    summary = {
        "n_matched": len(names),
        "n_candidate": len(cand_rows),
        "n_truth": len(true_rows),
        "mean_abs_defocus_error_A": _mean(abs_error),
        "median_abs_defocus_error_A": _median(abs_error),
        "max_abs_defocus_error_A": _max(abs_error),
        "mean_abs_defocus_error_percent": _mean(errors.mean_defocus_error_percent.abs()),
        "mean_abs_astigmatism_error_A": _mean(errors.astigmatism_error_A.abs()),
        "mean_angle_error_deg": _mean(errors.angle_error_deg[angle_scored]),
        "n_angle_scored": int(angle_scored.sum()),
    }
    return {"metric": "ctf", "summary": summary, "per_item": per_item}


# --------------------------------------------------------------------------------------------
# picking


def _score_picks(cand: ItemSet, truth: ItemSet, radius_A: float) -> dict[str, Any]:
    true_px = _micrograph_pixel_size_A(truth)
    radius_px = radius_A / true_px
    cand_xy, true_xy = _centres_px(cand, true_px), _centres_px(truth, true_px)
    cand_groups, true_groups = _groups(cand), _groups(truth)
    per_item = []
    totals = [0, 0, 0]
    for name in sorted(set(cand_groups) | set(true_groups)):
        picks = torch.from_numpy(cand_xy[cand_groups.get(name, np.empty(0, np.int64))])
        centres = torch.from_numpy(true_xy[true_groups.get(name, np.empty(0, np.int64))])
        result = scoring.picking_scores(picks, centres, radius_px)
        totals[0] += result.n_true_positive
        totals[1] += result.n_predicted
        totals[2] += result.n_true
        per_item.append({"micrograph_name": name, **result.__dict__})
    overall = scoring.picking_scores_from_counts(*totals)
    summary = {**overall.__dict__, "match_radius_A": radius_A, "n_micrographs": len(per_item)}
    return {"metric": "picking", "summary": summary, "per_item": per_item}


# --------------------------------------------------------------------------------------------
# poses


def _pose_pairs(
    cand: ItemSet, truth: ItemSet, params: ScoreParams, radius_A: float
) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices of paired candidate and true particles, and the join used."""
    by_coordinates = all(
        _has_values(s, c) for s in (cand, truth) for c in ("micrograph_name", "coord_x_px")
    )
    join = params.pose_join
    if join == "auto":
        join = "coordinates" if by_coordinates else "order"
    if join == "order":
        if len(cand) != len(truth):
            raise ValueError(
                f"cannot join particles on order: {len(cand)} candidates vs {len(truth)} true"
            )
        rows = np.arange(len(cand), dtype=np.int64)
        return rows, rows, join
    if not by_coordinates:
        raise ValueError("cannot join particles on coordinates: a set lacks micrograph_name/coords")
    true_px = _micrograph_pixel_size_A(truth)
    cand_xy, true_xy = _centres_px(cand, true_px), _centres_px(truth, true_px)
    true_groups = _groups(truth)
    cand_rows, true_rows = [], []
    for name, rows in _groups(cand).items():
        if name not in true_groups:
            continue
        t_rows = true_groups[name]
        c, t = scoring.match_points(
            torch.from_numpy(cand_xy[rows]), torch.from_numpy(true_xy[t_rows]), radius_A / true_px
        )
        cand_rows.append(rows[c.numpy()])
        true_rows.append(t_rows[t.numpy()])
    empty = np.empty(0, dtype=np.int64)
    cat_c = np.concatenate(cand_rows) if cand_rows else empty
    cat_t = np.concatenate(true_rows) if true_rows else empty
    order = np.argsort(cat_c, kind="stable")
    return cat_c[order], cat_t[order], join


def _effective_origin_A(item_set: ItemSet, rows: np.ndarray, centres: bool) -> torch.Tensor:
    """Origins to compare (Å): with ``centres``, ``origin - coord * pixel size`` (minus centre)."""
    origin = np.zeros((len(rows), 2))
    if _has_values(item_set, "origin_x_A"):
        origin = np.stack([_column(item_set, "origin_x_A"), _column(item_set, "origin_y_A")], 1)
        origin = np.nan_to_num(origin.astype(np.float64))[rows]
    if centres:
        px = _micrograph_pixel_size_A(item_set)
        xy = np.stack([_column(item_set, "coord_x_px"), _column(item_set, "coord_y_px")], 1)
        origin = origin - xy.astype(np.float64)[rows] * px
    return torch.from_numpy(origin)


def _score_poses(
    cand: ItemSet, truth: ItemSet, truth_label: str, params: ScoreParams, radius_A: float
) -> dict[str, Any]:
    if not all(_has_values(truth, c) for c in _EULER):
        raise ValueError(f"truth {truth_label}: particles have no poses")
    c_rows, t_rows, join = _pose_pairs(cand, truth, params, radius_A)

    def euler(item_set: ItemSet, rows: np.ndarray) -> torch.Tensor:
        angles = np.stack([_column(item_set, c) for c in _EULER], axis=1).astype(np.float64)
        return torch.from_numpy(angles[rows])

    angle = scoring.pose_error_deg(euler(cand, c_rows), euler(truth, t_rows), params.symmetry)
    centres = join == "coordinates"
    shift = scoring.shift_error_A(
        _effective_origin_A(cand, c_rows, centres), _effective_origin_A(truth, t_rows, centres)
    )
    per_item = [
        {
            "candidate_row": int(c),
            "truth_row": int(t),
            "pose_error_deg": float(a),
            "shift_error_A": float(s),
        }
        for c, t, a, s in zip(c_rows, t_rows, angle, shift, strict=True)
    ]
    summary = {
        "join": join,
        "symmetry": params.symmetry,
        "n_matched": len(c_rows),
        "n_candidate": len(cand),
        "n_truth": len(truth),
        "mean_pose_error_deg": _mean(angle),
        "median_pose_error_deg": _median(angle),
        "fraction_within_5_deg": _mean((angle <= 5.0).double()),
        "mean_shift_error_A": _mean(shift),
        "median_shift_error_A": _median(shift),
    }
    return {"metric": "poses", "summary": summary, "per_item": per_item}


# --------------------------------------------------------------------------------------------
# maps and drift


def _read_map(source: _Source) -> tuple[torch.Tensor, float | None]:
    data, info = read_mrc(source.path)
    pixel = source.meta.get("pixel_size_A") or info.pixel_size_A
    return torch.from_numpy(np.array(data, dtype=np.float32)), pixel


def _score_map(candidate: _Source, truth: _Source) -> dict[str, Any]:
    volume, cand_px = _read_map(candidate)
    true_volume, true_px = _read_map(truth)
    pixel_size_A = true_px or cand_px
    if not pixel_size_A:
        raise ValueError(f"{truth.path}: the true map has no pixel size")
    if cand_px and abs(cand_px - pixel_size_A) > 1e-3 * pixel_size_A:
        raise ValueError(
            f"{candidate.path}: pixel size {cand_px} Å differs from the true map's "
            f"{pixel_size_A} Å; resample it first"
        )
    try:
        result = scoring.map_vs_truth(volume, true_volume, float(pixel_size_A))
    except ValueError as exc:
        raise ValueError(f"{candidate.path}: {exc}") from exc
    summary = {
        "resolution_fsc05_A": result.resolution_fsc05_A,
        "resolution_fsc0143_A": result.resolution_fsc0143_A,
        "pixel_size_A": float(pixel_size_A),
        "box_size_px": int(volume.shape[-1]),
    }
    curve = {
        "frequency_invA": result.frequencies_invA.tolist(),
        "fsc": result.fsc.tolist(),
    }
    return {"metric": "map", "summary": summary, "per_item": [], "curve": curve}


def read_table(path: Path) -> pa.Table:
    """Read a table file: Parquet, Arrow IPC/Feather, CSV, JSON (records or columns) or ``.npz``."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix in (".arrow", ".feather", ".ipc"):
            return feather.read_table(path)
        if suffix == ".csv":
            return pacsv.read_csv(path)
        if suffix == ".json":
            data = json.loads(path.read_text())
            return pa.Table.from_pylist(data) if isinstance(data, list) else pa.table(data)
        if suffix == ".npz":
            with np.load(path) as npz:
                return pa.table({k: npz[k] for k in npz.files})
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: cannot read the table: {exc}") from exc
    raise ValueError(f"{path}: unknown table format {suffix!r} (parquet, arrow, csv, json, npz)")


def _trajectories(source: _Source) -> dict[str, np.ndarray]:
    """``(T, 2)`` drift per micrograph, frames in order."""
    table = read_table(source.path)
    missing = [c for c in DRIFT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{source.path}: a drift table needs the columns {missing}")
    names = np.asarray(table.column("micrograph_name").to_pylist(), dtype=str)
    frame = table.column("frame").to_numpy()
    xy = np.stack([table.column(c).to_numpy() for c in ("shift_x_px", "shift_y_px")], 1)
    out = {}
    for name in sorted(set(names.tolist())):
        rows = np.flatnonzero(names == name)
        out[name] = xy[rows[np.argsort(frame[rows], kind="stable")]].astype(np.float64)
    return out


def _score_drift(candidate: _Source, truth: _Source) -> dict[str, Any]:
    est, true = _trajectories(candidate), _trajectories(truth)
    per_item = []
    for name in sorted(set(est) & set(true)):
        if est[name].shape != true[name].shape:
            raise ValueError(
                f"{candidate.path}: {name} has {len(est[name])} frames, the truth {len(true[name])}"
            )
        rmse = scoring.drift_rmse_px(torch.from_numpy(est[name]), torch.from_numpy(true[name]))
        per_item.append({"micrograph_name": name, "drift_rmse_px": float(rmse)})
    values = torch.tensor([r["drift_rmse_px"] for r in per_item], dtype=torch.float64)
    summary = {
        "n_matched": len(per_item),
        "n_candidate": len(est),
        "n_truth": len(true),
        "mean_drift_rmse_px": _mean(values),
        "max_drift_rmse_px": _max(values),
    }
    return {"metric": "drift", "summary": summary, "per_item": per_item}


# --------------------------------------------------------------------------------------------
# numbers


def _mean(x: torch.Tensor) -> float | None:
    return float(x.double().mean()) if x.numel() else None


def _median(x: torch.Tensor) -> float | None:
    return float(x.double().median()) if x.numel() else None


def _max(x: torch.Tensor) -> float | None:
    return float(x.double().max()) if x.numel() else None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _to_json(report: dict[str, Any]) -> str:
    return json.dumps(_finite(report), indent=1, sort_keys=True, allow_nan=False) + "\n"
