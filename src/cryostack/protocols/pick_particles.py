"""``pick-particles`` (blob or template picking) and ``edit-coordinates`` (manual edits and
re-thresholding without re-picking).

``pick-particles`` runs one step per micrograph and registers two CoordinateSets:

- ``candidates``: every peak scoring at least ``candidate_floor``, with its ``score`` (noise
  standard deviations above the micrograph's typical background, see
  :mod:`cryostack.em.picking`) and ``diameter_A`` (LoG: the best scale) or ``template`` (the
  best template's index);
- ``coordinates``: the candidates scoring at least ``threshold`` (at most
  ``max_picks_per_micrograph`` per micrograph, the best ones): what extraction uses.

To re-tune the threshold later, run ``edit-coordinates`` on the ``candidates`` output with
``min_score``: no picking again. ``edit-coordinates`` also adds and removes picks on one
micrograph (manual edits); each edit is a run, so provenance is kept. Manual picks have score NaN
and survive re-thresholding. :func:`edit_coordinates` does both from Python.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cryostack.core.datamodel import FileKind, ItemSet, SetKind
from cryostack.core.protocol import (
    InputSpec,
    OutputSpec,
    OutputValue,
    Params,
    Protocol,
    RunContext,
    StepContext,
    StepSpec,
    param,
)
from cryostack.core.sets import read_set, write_set
from cryostack.em.ctf import ctf_2d
from cryostack.em.fourier import fourier_crop, fourier_pad
from cryostack.em.orientation_grids import directions_to_euler, healpix_directions
from cryostack.em.picking import Picks, pick_blobs, pick_templates
from cryostack.em.projection import project_volume
from cryostack.em.rotations import euler_to_matrix
from cryostack.io.mrc import read_images, read_mrc

CANDIDATES_FILE = "candidates.npz"


class PickParticlesParams(Params):
    method: Literal["log", "template"] = param(
        "log",
        help="log: Laplacian-of-Gaussian blob picker (no reference); template: normalised "
        "cross-correlation with the references (2D classes or projections of a map)",
    )
    min_diameter_A: float = param(..., help="smallest particle diameter", unit="Å", gt=0)
    max_diameter_A: float = param(..., help="largest particle diameter", unit="Å", gt=0)
    threshold: float = param(
        4.0,
        help="lowest score of a pick in 'coordinates' (noise standard deviations above the "
        "background); re-tune later with edit-coordinates on 'candidates'",
    )
    candidate_floor: float = param(
        2.0, help="lowest score of a pick kept in 'candidates'", group="Advanced"
    )
    max_picks_per_micrograph: int | None = param(
        None, help="keep at most this many picks per micrograph (the best)", ge=1
    )
    edge_exclusion_A: float | None = param(
        None,
        help="no picks closer than this to a micrograph's edge (default: half the largest "
        "diameter)",
        unit="Å",
        ge=0,
    )
    min_distance_A: float | None = param(
        None,
        help="minimum distance between picks (default: the smallest diameter for log, 0.7 x "
        "the largest for template)",
        unit="Å",
        gt=0,
        group="Advanced",
    )
    particles_white: bool = param(
        False, help="particles are white in the micrographs (default: dark, raw data)"
    )
    n_scales: int = param(4, help="LoG scales over the diameter range", ge=1, group="Blob")
    in_plane_step_deg: float = param(
        15.0, help="in-plane rotation step of the templates", unit="°", gt=0, group="Template"
    )
    projection_order: int = param(
        0,
        help="HEALPix order of the projection directions of a map reference (0: 12, 1: 48)",
        ge=0,
        le=2,
        group="Template",
    )
    ctf_templates: bool = param(
        True,
        help="multiply the templates by each micrograph's CTF (when the micrographs have one)",
        group="Template",
    )


def _params(ctx: RunContext) -> PickParticlesParams:
    assert isinstance(ctx.params, PickParticlesParams)
    return ctx.params


def _pixel_size(item_set: ItemSet, row: int) -> float:
    groups = item_set.optics_by_id()
    group = int(item_set.table.column("optics_group")[row].as_py())
    if group not in groups:
        raise ValueError(f"optics group {group} of micrograph row {row} is not described")
    return groups[group].pixel_size_A


def _resample(images: torch.Tensor, from_A: float, to_A: float) -> torch.Tensor:
    """Square images ``(T, N, N)`` resampled from pixel size ``from_A`` to ``to_A``."""
    n = int(images.shape[-1])
    size = max(8, 2 * round(n * from_A / to_A / 2))
    if size == n:
        return images
    return fourier_crop(images, size) if size < n else fourier_pad(images, size)


def load_references(ctx: RunContext) -> tuple[torch.Tensor, float]:
    """Template images (RELION contrast) and their pixel size from the ``references`` input."""
    ref = ctx.input("references")
    params = _params(ctx)
    if ref.type == FileKind.VOLUME:
        volume, info = read_mrc(ctx.path(ref.path))
        pixel = ref.meta.get("pixel_size_A") or info.pixel_size_A
        if volume.ndim != 3 or pixel is None:
            raise ValueError(f"{ref.path}: the reference map needs 3 dimensions and a pixel size")
        directions = healpix_directions(params.projection_order, dtype=torch.float64)
        angles = torch.cat(
            [directions_to_euler(directions), directions.new_zeros(len(directions), 1)], 1
        )
        templates = project_volume(torch.from_numpy(volume), euler_to_matrix(angles).float())
        return templates, float(pixel)
    classes = read_set(ctx.path(ref.path))
    if not classes.optics:
        raise ValueError(f"{ref.path}: the 2D classes have no optics group (pixel size)")
    images = []
    table = classes.table
    for path in sorted(set(table.column("image_path").to_pylist())):
        rows = pc.equal(table.column("image_path"), path)
        indices = table.filter(rows).column("image_index").to_numpy()
        images.append(read_images(ctx.path(path), indices))
    return torch.from_numpy(np.concatenate(images)), classes.optics[0].pixel_size_A


def _micrograph_ctf(
    micrographs: ItemSet, row: int, shape: tuple[int, int], pixel_size_A: float
) -> torch.Tensor | None:
    table = micrographs.table
    if "defocus_u_A" not in table.column_names:
        return None
    values = {c: table.column(c)[row].as_py() for c in table.column_names}
    if values.get("defocus_u_A") is None:
        return None
    group = micrographs.optics_by_id()[int(values["optics_group"])]
    return ctf_2d(
        float(values["defocus_u_A"]),
        float(values.get("defocus_v_A") or values["defocus_u_A"]),
        float(values.get("defocus_angle_deg") or 0.0),
        voltage_kV=group.voltage_kV,
        cs_mm=group.cs_mm,
        amplitude_contrast=group.amplitude_contrast,
        phase_shift_deg=float(values.get("phase_shift_deg") or 0.0),
        pixel_size_A=pixel_size_A,
        shape=shape,
    )


def _candidate_table(name: str, data: Any, label: str) -> pa.Table:
    n = len(data["score"])
    return pa.table(
        {
            "micrograph_name": pa.array([name] * n, pa.string()),
            "coord_x_px": pa.array(data["x"], pa.float64()),
            "coord_y_px": pa.array(data["y"], pa.float64()),
            "score": pa.array(data["score"], pa.float64()),
            label: pa.array(data["label"], pa.float64()),
        }
    )


def threshold_coordinates(
    table: pa.Table, min_score: float | None, max_per_micrograph: int | None
) -> pa.Table:
    """Rows with ``score >= min_score`` (NaN scores, i.e. manual picks, always kept), at most
    ``max_per_micrograph`` per micrograph (manual first, then by decreasing score)."""
    score = table.column("score").to_numpy(zero_copy_only=False)
    keep = np.isnan(score) | (score >= (min_score if min_score is not None else -np.inf))
    if max_per_micrograph is not None:
        names = np.asarray(table.column("micrograph_name").to_pylist(), dtype=object)
        rank_key = np.where(np.isnan(score), np.inf, score)
        for name in set(names[keep].tolist()):
            rows = np.nonzero(keep & (names == name))[0]
            if len(rows) > max_per_micrograph:
                order = rows[np.argsort(-rank_key[rows], kind="stable")]
                keep[order[max_per_micrograph:]] = False
    return table.filter(pa.array(keep))


class PickParticles(Protocol):
    id = "pick-particles"
    name = "Pick particles"
    category = "Picking"
    help = (
        "Finds particles on micrographs with a Laplacian-of-Gaussian blob picker over a "
        "diameter range, or by template matching against 2D class averages or projections of a "
        "map. Keeps every candidate with its score, so the threshold can be tuned afterwards."
    )
    Params = PickParticlesParams
    inputs = {
        "micrographs": InputSpec((SetKind.MICROGRAPHS,), "micrographs to pick"),
        "references": InputSpec(
            (SetKind.CLASSES_2D, FileKind.VOLUME),
            "templates for the template method: 2D class averages or a map",
            optional=True,
        ),
    }
    outputs = {
        "coordinates": OutputSpec(SetKind.COORDINATES, "picks above the threshold"),
        "candidates": OutputSpec(SetKind.COORDINATES, "all candidates above the floor"),
    }

    def check(self, ctx: RunContext) -> list[str]:
        p = _params(ctx)
        problems = []
        if p.max_diameter_A < p.min_diameter_A:
            problems.append(
                f"max_diameter_A ({p.max_diameter_A}) is below min_diameter_A ({p.min_diameter_A})"
            )
        if p.method == "template" and not ctx.has_input("references"):
            problems.append("the template method needs a 'references' input (2D classes or map)")
        if p.candidate_floor > p.threshold:
            problems.append(
                f"candidate_floor ({p.candidate_floor}) must not exceed threshold ({p.threshold})"
            )
        return problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        micrographs = ctx.read_input_set("micrographs")
        names = micrographs.table.column("micrograph_name").to_pylist()
        return [
            StepSpec(key=f"mic-{i:05d}", item=str(name), payload={"row": i, "name": name})
            for i, name in enumerate(names)
        ]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        p = _params(ctx)
        row, name = int(ctx.step.payload["row"]), str(ctx.step.payload["name"])
        micrographs = ctx.read_input_set("micrographs")
        path = micrographs.table.column("micrograph_path")[row].as_py()
        pixel = _pixel_size(micrographs, row)
        image, _ = read_mrc(ctx.path(path))
        if image.ndim != 2:
            raise ValueError(f"{path}: micrograph {name} is not a single 2D image")
        micrograph = torch.from_numpy(np.require(image, requirements="W")).to(ctx.device)
        picks = self._pick(ctx, micrographs, row, micrograph, pixel)
        label = picks.diameters_px * pixel if p.method == "log" else picks.diameters_px
        np.savez(
            ctx.work_dir / CANDIDATES_FILE,
            x=picks.positions_px[:, 0].cpu().numpy(),
            y=picks.positions_px[:, 1].cpu().numpy(),
            score=picks.scores.cpu().numpy(),
            label=label.cpu().numpy(),
        )
        n_picked = len(picks.above(p.threshold, p.max_picks_per_micrograph))
        ctx.log(f"{name}: {len(picks)} candidates, {n_picked} at score >= {p.threshold:g}")
        return {"n_candidates": len(picks), "n_picked": n_picked}

    def _pick(
        self,
        ctx: StepContext,
        micrographs: ItemSet,
        row: int,
        micrograph: torch.Tensor,
        pixel_A: float,
    ) -> Picks:
        p = _params(ctx)
        edge = None if p.edge_exclusion_A is None else p.edge_exclusion_A / pixel_A
        distance = None if p.min_distance_A is None else p.min_distance_A / pixel_A
        if p.method == "log":
            return pick_blobs(
                micrograph,
                p.min_diameter_A / pixel_A,
                p.max_diameter_A / pixel_A,
                n_scales=p.n_scales,
                floor=p.candidate_floor,
                min_distance_px=distance,
                edge_px=edge,
                bright=p.particles_white,
            )
        templates, template_pixel = load_references(ctx)
        templates = _resample(templates.to(torch.float32), template_pixel, pixel_A)
        n = int(templates.shape[-1])
        ctf = _micrograph_ctf(micrographs, row, (n, n), pixel_A) if p.ctf_templates else None
        return pick_templates(
            micrograph,
            templates.to(micrograph.device),
            p.max_diameter_A / pixel_A,
            in_plane_step_deg=p.in_plane_step_deg,
            floor=p.candidate_floor,
            min_distance_px=distance,
            edge_px=edge,
            ctf=ctf,
            bright=p.particles_white,
        )

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        p = _params(ctx)
        micrographs = ctx.read_input_set("micrographs")
        label = "diameter_A" if p.method == "log" else "template"
        tables = []
        for step in self.plan(ctx):
            if step.key not in results:
                continue
            data = np.load(ctx.step_dir(step.key) / CANDIDATES_FILE)
            tables.append(_candidate_table(str(step.payload["name"]), data, label))
        candidates = pa.concat_tables(tables) if tables else _candidate_table("", _EMPTY, label)
        picked = threshold_coordinates(candidates, p.threshold, p.max_picks_per_micrograph)
        meta: dict[str, Any] = {
            "method": p.method,
            "threshold": p.threshold,
            "candidate_floor": p.candidate_floor,
            "micrograph_pixel_size_A": micrographs.optics[0].pixel_size_A
            if micrographs.optics
            else None,
            "n_micrographs": len(tables),
        }
        outputs = {}
        for out, table, extra in (
            ("candidates", candidates, {"min_score": p.candidate_floor}),
            ("coordinates", picked, {"min_score": p.threshold}),
        ):
            item_set = ItemSet(
                SetKind.COORDINATES, table, list(micrographs.optics), {**meta, **extra}
            )
            target = ctx.output_path(f"{out}.cset")
            write_set(item_set, target)
            outputs[out] = OutputValue(
                SetKind.COORDINATES, ctx.relative(target), table.num_rows, item_set.meta
            )
        return outputs


_EMPTY: dict[str, list[float]] = {"x": [], "y": [], "score": [], "label": []}


# --------------------------------------------------------------------------------------------
# manual edits and re-thresholding


class EditCoordinatesParams(Params):
    micrograph_name: str | None = param(
        None, help="micrograph the added/removed picks are on (needed with add or remove)"
    )
    add: list[tuple[float, float]] = param(
        [], help="picks to add, as (x, y) micrograph pixels (score NaN: manual)"
    )
    remove: list[tuple[float, float] | int] = param(
        [],
        help="picks to remove: (x, y) (the nearest pick within remove_radius_px) or 0-based "
        "indices among that micrograph's picks in the set's order",
    )
    remove_radius_px: float = param(
        20.0, help="how far from a given (x, y) a pick may be to be removed", unit="px", gt=0
    )
    min_score: float | None = param(
        None, help="keep only picks scoring at least this (manual picks are always kept)"
    )
    max_picks_per_micrograph: int | None = param(
        None, help="keep at most this many picks per micrograph (the best)", ge=1
    )


def apply_edits(table: pa.Table, params: EditCoordinatesParams) -> tuple[pa.Table, dict[str, int]]:
    """Remove, add, then re-threshold picks of a coordinates table; returns counts too."""
    counts = {"removed": 0, "added": len(params.add)}
    name = params.micrograph_name
    if (params.add or params.remove) and name is None:
        raise ValueError("edit-coordinates: micrograph_name is needed to add or remove picks")
    if params.remove:
        names = np.asarray(table.column("micrograph_name").to_pylist(), dtype=object)
        rows = np.nonzero(names == name)[0]
        if len(rows) == 0:
            raise ValueError(f"edit-coordinates: no picks on micrograph {name!r} to remove")
        xy = np.stack(
            [
                table.column("coord_x_px").to_numpy()[rows],
                table.column("coord_y_px").to_numpy()[rows],
            ],
            axis=-1,
        )
        drop: set[int] = set()
        for item in params.remove:
            if isinstance(item, int):
                if not 0 <= item < len(rows):
                    raise ValueError(
                        f"edit-coordinates: index {item} is out of range: micrograph {name!r} "
                        f"has {len(rows)} picks"
                    )
                drop.add(int(rows[item]))
                continue
            distance = np.hypot(xy[:, 0] - item[0], xy[:, 1] - item[1])
            nearest = int(np.argmin(distance))
            if distance[nearest] > params.remove_radius_px:
                raise ValueError(
                    f"edit-coordinates: no pick on {name!r} within {params.remove_radius_px} px "
                    f"of ({item[0]}, {item[1]})"
                )
            drop.add(int(rows[nearest]))
        keep = np.ones(table.num_rows, dtype=bool)
        keep[list(drop)] = False
        table = table.filter(pa.array(keep))
        counts["removed"] = len(drop)
    if params.add:
        n = len(params.add)
        added = {c: pa.nulls(n, table.schema.field(c).type) for c in table.column_names}
        added["micrograph_name"] = pa.array([name] * n, pa.string())
        added["coord_x_px"] = pa.array([float(x) for x, _ in params.add], pa.float64())
        added["coord_y_px"] = pa.array([float(y) for _, y in params.add], pa.float64())
        if "score" in added:
            added["score"] = pa.array([math.nan] * n, pa.float64())
        table = pa.concat_tables([table, pa.table(added, schema=table.schema)])
    if "score" in table.column_names:
        before = table.num_rows
        table = threshold_coordinates(table, params.min_score, params.max_picks_per_micrograph)
        counts["below_threshold"] = before - table.num_rows
    return table, counts


class EditCoordinates(Protocol):
    id = "edit-coordinates"
    name = "Edit coordinates"
    category = "Picking"
    help = (
        "Adds or removes picks on a micrograph (manual edits) and/or re-applies a score "
        "threshold to a coordinates set, without picking again."
    )
    Params = EditCoordinatesParams
    inputs = {"coordinates": InputSpec((SetKind.COORDINATES,), "coordinates to edit")}
    outputs = {"coordinates": OutputSpec(SetKind.COORDINATES, "the edited coordinates")}

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        return [StepSpec(key="edit")]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        assert isinstance(ctx.params, EditCoordinatesParams)
        source = ctx.read_input_set("coordinates")
        table, counts = apply_edits(source.table, ctx.params)
        meta = {**source.meta, "edited_from": ctx.input("coordinates").path, **counts}
        if ctx.params.min_score is not None:
            meta["min_score"] = ctx.params.min_score
        write_set(ItemSet(SetKind.COORDINATES, table, source.optics, meta), ctx.work_dir / "c.cset")
        ctx.log(f"{counts}; {table.num_rows} picks")
        return {"n_items": table.num_rows, **counts}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        item_set = read_set(ctx.step_dir("edit") / "c.cset")
        target = ctx.output_path("coordinates.cset")
        write_set(item_set, target)
        return {
            "coordinates": OutputValue(
                SetKind.COORDINATES, ctx.relative(target), len(item_set), item_set.meta
            )
        }


def edit_coordinates(
    project: Any,
    coordinates_ref: str | tuple[int, str | None],
    micrograph_name: str | None = None,
    add: list[tuple[float, float]] | None = None,
    remove: list[tuple[float, float] | int] | None = None,
    *,
    min_score: float | None = None,
    max_picks_per_micrograph: int | None = None,
    remove_radius_px: float = 20.0,
    timeout_s: float | None = 300.0,
) -> int:
    """Record manual edits (and/or a new threshold) of a CoordinateSet as a new run; wait for it.

    Args:
        project: an open :class:`cryostack.core.project.Project`.
        coordinates_ref: ``"RUN"`` / ``"RUN.OUTPUT"`` or ``(run_id, output)``.
        micrograph_name: micrograph of the added/removed picks.
        add: (x, y) micrograph pixels to add.
        remove: (x, y) points (nearest pick within ``remove_radius_px``) or 0-based indices
            among that micrograph's picks.
        min_score, max_picks_per_micrograph: re-thresholding (manual picks always kept).
        timeout_s: how long to wait for the run.

    Returns:
        The id of the finished run (its output ``coordinates``).

    Raises:
        RuntimeError: the run did not finish (its log tells why).
    """
    from cryostack.core.project import FINISHED, InputLink
    from cryostack.execution.launch import launch, wait_for

    link = (
        InputLink.parse(coordinates_ref)
        if isinstance(coordinates_ref, str)
        else InputLink(coordinates_ref[0], coordinates_ref[1])
    )
    params: dict[str, Any] = {
        "micrograph_name": micrograph_name,
        "add": [list(map(float, xy)) for xy in add or []],
        "remove": [r if isinstance(r, int) else list(map(float, r)) for r in remove or []],
        "remove_radius_px": remove_radius_px,
        "min_score": min_score,
        "max_picks_per_micrograph": max_picks_per_micrograph,
    }
    run_id = int(project.create_run("edit-coordinates", params, {"coordinates": [link]}))
    launch(project, run_id, workers=1)
    status = wait_for(project, run_id, timeout_s=timeout_s)
    if status != FINISHED:
        log = project.path(project.run(run_id).log_path).read_text()
        raise RuntimeError(f"edit-coordinates run {run_id} {status}: {log[-2000:]}")
    return run_id
