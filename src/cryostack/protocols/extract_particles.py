"""``extract-particles``: cut particle boxes around coordinates into MRC stacks.

One step per micrograph with picks. Each box is centred on the rounded coordinate (see
:mod:`cryostack.em.extraction`); boxes reaching beyond the micrograph are dropped and counted
(step results, log, and the output's meta ``n_dropped_at_edge``). Images are optionally
phase-flipped (CTF of the micrograph), binned by Fourier cropping to ``rescaled_size_px``,
inverted to RELION's contrast (protein white; raw micrographs show protein dark) and normalised
(background outside ``background_radius_px`` to mean 0, std 1).

The output ParticleSet has one MRC stack per micrograph (in the step folders), the integer box
centres as ``coord_x_px``/``coord_y_px`` (micrograph pixels), ``micrograph_name``, the
micrograph's CTF columns and optics groups whose ``pixel_size_A`` / ``image_size_px`` are the
particles' (``micrograph_pixel_size_A`` the micrographs'). Phase-flipped data is marked in the
meta (``ctf_phase_flipped``): RELION wants ``--ctf_phase_flipped`` / rlnCtfDataArePhaseFlipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cryostack.core.datamodel import CTF_COLUMNS, ItemSet, SetKind
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
from cryostack.core.sets import write_set
from cryostack.em.ctf import ctf_2d
from cryostack.em.extraction import binned_pixel_size_A, extract_boxes, prepare_particles
from cryostack.io.mrc import read_mrc, write_mrc_stack

STACK_FILE = "particles.mrcs"
CENTRES_FILE = "centres.npy"
CTF_REQUIRED = ("defocus_u_A", "defocus_v_A", "defocus_angle_deg")


class ExtractParticlesParams(Params):
    box_size_px: int = param(..., help="box size in micrograph pixels", ge=8)
    rescaled_size_px: int | None = param(
        None,
        help="bin the boxes to this size by Fourier cropping (even, <= box; None: no binning)",
        ge=8,
    )
    invert_contrast: bool = param(
        True, help="invert contrast: raw micrographs (protein dark) -> RELION (protein white)"
    )
    normalise: bool = param(True, help="background (outside the radius) to mean 0 and std 1")
    background_radius_px: float | None = param(
        None,
        help="radius of the particle circle in output pixels (default 75% of half the box)",
        unit="px",
        gt=0,
    )
    phase_flip: bool = param(False, help="phase-flip the images with the micrograph's CTF")


def _params(ctx: RunContext) -> ExtractParticlesParams:
    assert isinstance(ctx.params, ExtractParticlesParams)
    return ctx.params


def _output_size(p: ExtractParticlesParams) -> int:
    return p.box_size_px if p.rescaled_size_px is None else p.rescaled_size_px


def _micrograph_rows(micrographs: ItemSet) -> dict[str, int]:
    names = micrographs.table.column("micrograph_name").to_pylist()
    return {str(name): i for i, name in enumerate(names)}


def _positions_of(coordinates: ItemSet, name: str) -> np.ndarray:
    table = coordinates.table
    names = np.asarray(table.column("micrograph_name").to_pylist(), dtype=object)
    rows = names == name
    x = table.column("coord_x_px").to_numpy(zero_copy_only=False)[rows]
    y = table.column("coord_y_px").to_numpy(zero_copy_only=False)[rows]
    return np.stack([x, y], axis=-1).astype(np.float64)


class ExtractParticles(Protocol):
    id = "extract-particles"
    name = "Extract particles"
    category = "Particles"
    help = (
        "Cuts boxes around picked coordinates into MRC stacks, with optional binning, "
        "phase flipping, contrast inversion to RELION's convention and background "
        "normalisation; boxes that reach beyond a micrograph are dropped and counted."
    )
    Params = ExtractParticlesParams
    inputs = {
        "micrographs": InputSpec(
            (SetKind.MICROGRAPHS,), "micrographs with their CTF", required_columns=CTF_REQUIRED
        ),
        "coordinates": InputSpec((SetKind.COORDINATES,), "particle coordinates"),
    }
    outputs = {"particles": OutputSpec(SetKind.PARTICLES, "extracted particles")}

    def check(self, ctx: RunContext) -> list[str]:
        p = _params(ctx)
        problems = []
        if p.rescaled_size_px is not None:
            if p.rescaled_size_px > p.box_size_px:
                problems.append(
                    f"rescaled_size_px ({p.rescaled_size_px}) exceeds box_size_px ({p.box_size_px})"
                )
            if p.rescaled_size_px % 2:
                problems.append(f"rescaled_size_px ({p.rescaled_size_px}) must be even")
        if p.box_size_px % 2:
            problems.append(f"box_size_px ({p.box_size_px}) must be even")
        if p.background_radius_px is not None and p.background_radius_px >= _output_size(p) / 2:
            problems.append(
                f"background_radius_px ({p.background_radius_px}) leaves no background in a "
                f"{_output_size(p)} px box"
            )
        return problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        micrographs = ctx.read_input_set("micrographs")
        coordinates = ctx.read_input_set("coordinates")
        rows = _micrograph_rows(micrographs)
        picked = set(coordinates.table.column("micrograph_name").to_pylist())
        unknown = sorted(str(n) for n in picked if n not in rows)
        if unknown:
            ctx.log(f"coordinates on {len(unknown)} unknown micrograph(s) ignored: {unknown[:5]}")
        return [
            StepSpec(key=f"mic-{row:05d}", item=name, payload={"row": row, "name": name})
            for name, row in rows.items()
            if name in picked
        ]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        p = _params(ctx)
        row, name = int(ctx.step.payload["row"]), str(ctx.step.payload["name"])
        micrographs = ctx.read_input_set("micrographs")
        coordinates = ctx.read_input_set("coordinates")
        values = {
            c: micrographs.table.column(c)[row].as_py() for c in micrographs.table.column_names
        }
        group = micrographs.optics_by_id().get(int(values["optics_group"]))
        if group is None:
            raise ValueError(f"micrograph {name}: optics group {values['optics_group']} unknown")
        missing = [c for c in CTF_REQUIRED if values.get(c) is None]
        if missing:
            raise ValueError(f"micrograph {name} has no CTF values ({', '.join(missing)})")
        image, _ = read_mrc(ctx.path(values["micrograph_path"]))
        if image.ndim != 2:
            raise ValueError(f"{values['micrograph_path']}: micrograph {name} is not a 2D image")
        micrograph = torch.from_numpy(np.require(image, requirements="W")).to(ctx.device)
        positions = torch.from_numpy(_positions_of(coordinates, name))
        boxes = extract_boxes(micrograph, positions, p.box_size_px)
        n_dropped = boxes.n_dropped
        ctf = None
        if p.phase_flip:
            ctf = ctf_2d(
                float(values["defocus_u_A"]),
                float(values["defocus_v_A"]),
                float(values["defocus_angle_deg"]),
                voltage_kV=group.voltage_kV,
                cs_mm=group.cs_mm,
                amplitude_contrast=group.amplitude_contrast,
                phase_shift_deg=float(values.get("phase_shift_deg") or 0.0),
                pixel_size_A=group.pixel_size_A,
                shape=(p.box_size_px, p.box_size_px),
                device=micrograph.device,
            )
        n = int(boxes.boxes.shape[0])
        if n:
            images = prepare_particles(
                boxes.boxes,
                rescaled_size_px=p.rescaled_size_px,
                invert_contrast=p.invert_contrast,
                normalise=p.normalise,
                background_radius_px=p.background_radius_px,
                ctf=ctf,
            )
            pixel = binned_pixel_size_A(group.pixel_size_A, p.box_size_px, p.rescaled_size_px)
            write_mrc_stack(ctx.work_dir / STACK_FILE, [images.cpu().numpy()], pixel)
        np.save(ctx.work_dir / CENTRES_FILE, boxes.centres_px.cpu().numpy().astype(np.float64))
        ctx.log(f"{name}: {n} particles, {n_dropped} dropped at the edge")
        return {"n_particles": n, "n_dropped": n_dropped}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        p = _params(ctx)
        micrographs = ctx.read_input_set("micrographs")
        size = _output_size(p)
        columns: dict[str, list[Any]] = {
            c: []
            for c in ("image_path", "image_index", "micrograph_name", "coord_x_px", "coord_y_px")
        }
        columns["optics_group"] = []
        ctf_columns = [c for c in CTF_COLUMNS if c in micrographs.table.column_names]
        for c in ctf_columns:
            columns[c] = []
        n_dropped = 0
        for step in self.plan(ctx):
            if step.key not in results:
                continue
            n_dropped += int(results[step.key]["n_dropped"])
            n = int(results[step.key]["n_particles"])
            if n == 0:
                continue
            row = int(step.payload["row"])
            centres = np.load(ctx.step_dir(step.key) / CENTRES_FILE)
            stack = ctx.relative(ctx.step_dir(step.key) / STACK_FILE)
            columns["image_path"] += [stack] * n
            columns["image_index"] += list(range(n))
            columns["micrograph_name"] += [step.payload["name"]] * n
            columns["coord_x_px"] += centres[:, 0].tolist()
            columns["coord_y_px"] += centres[:, 1].tolist()
            columns["optics_group"] += [micrographs.table.column("optics_group")[row].as_py()] * n
            for c in ctf_columns:
                columns[c] += [micrographs.table.column(c)[row].as_py()] * n
        types = {"image_index": pa.int64(), "optics_group": pa.int32()}
        table = pa.table(
            {
                c: pa.array(
                    v, types.get(c, pa.string() if c.endswith(("_path", "_name")) else pa.float64())
                )
                for c, v in columns.items()
            }
        )
        optics = [
            g.model_copy(
                update={
                    "pixel_size_A": binned_pixel_size_A(
                        g.pixel_size_A, p.box_size_px, p.rescaled_size_px
                    ),
                    "micrograph_pixel_size_A": g.pixel_size_A,
                    "image_size_px": size,
                }
            )
            for g in micrographs.optics
        ]
        meta = {
            "n_dropped_at_edge": n_dropped,
            "box_size_px": p.box_size_px,
            "image_size_px": size,
            "contrast_inverted": p.invert_contrast,
            "normalised": p.normalise,
            "ctf_phase_flipped": p.phase_flip,
        }
        target = ctx.output_path("particles.cset")
        write_set(ItemSet(SetKind.PARTICLES, table, optics, meta), target)
        ctx.log(f"{table.num_rows} particles extracted, {n_dropped} dropped at the edge")
        return {
            "particles": OutputValue(SetKind.PARTICLES, ctx.relative(target), table.num_rows, meta)
        }
