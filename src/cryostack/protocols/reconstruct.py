"""Reconstruct a map from particles with known poses: two half maps, their FSC, a combined map.

The counterpart of ``relion_reconstruct``: CTF-weighted direct Fourier inversion
(:class:`cryostack.em.reconstruction.Backprojector`). Particles are split into their gold-standard
half sets (``random_subset``; alternate rows when unassigned) and stream from their MRC stacks in
chunks, one checkpointed step per chunk, so memory does not grow with the particle count and a
killed run continues where it stopped.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cryostack.core.datamodel import FileKind, SetKind
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
from cryostack.em.ctf import ctf_2d
from cryostack.em.fsc import fsc, resolution_at_threshold, shell_frequencies
from cryostack.em.reconstruction import Backprojector, reconstruct, relion_origin_to_shift_px
from cryostack.em.rotations import euler_to_matrix
from cryostack.io.mrc import open_mrc_stack, write_mrc

POSE_AND_CTF = ("rot_deg", "tilt_deg", "psi_deg", "defocus_u_A", "defocus_v_A", "defocus_angle_deg")


class ReconstructParams(Params):
    chunk_size: int = param(
        2000, help="particles per checkpointed step", ge=1, le=100_000, group="Compute"
    )
    batch_size: int = param(256, help="particles inserted at once", ge=1, le=8192, group="Compute")
    wiener_constant: float = param(
        0.0, help="1/SNR added to the CTF² weights (0: plain division)", ge=0
    )
    ctf: bool = param(True, help="correct for the CTF (particles carry CTF columns)")
    threads: int = param(2, help="CPU threads per step", ge=1, le=256, group="Compute")


class Reconstruct(Protocol):
    id = "reconstruct"
    name = "Reconstruct (known poses)"
    category = "3D"
    help = (
        "Reconstructs a 3D map from particles whose poses are known (from refinement, import or "
        "simulation) by CTF-weighted back-projection in Fourier space. The particles' two "
        "gold-standard half sets give two independent half maps; their Fourier shell "
        "correlation estimates the resolution (0.143 threshold)."
    )
    citations = (
        "Scheres SHW (2012) RELION: implementation of a Bayesian approach to cryo-EM structure "
        "determination. J Struct Biol 180:519-530.",
    )
    Params = ReconstructParams
    inputs = {
        "particles": InputSpec(
            (SetKind.PARTICLES,), "particles with poses and CTF", required_columns=POSE_AND_CTF
        )
    }
    outputs = {
        "volume": OutputSpec(FileKind.VOLUME, "combined map, with its half maps as companions"),
        "fsc": OutputSpec(FileKind.FSC_CURVE, "FSC between the half maps"),
    }

    def check(self, ctx: RunContext) -> list[str]:
        ref = ctx.input("particles")
        if not ref.n_items:
            return [f"run {ref.source_run_id}'s particle set is empty"]
        return []

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        assert isinstance(ctx.params, ReconstructParams)
        halves = half_sets(ctx.read_input_set("particles").table)
        steps = []
        for half, rows in enumerate(halves, start=1):
            for start in range(0, len(rows), ctx.params.chunk_size):
                chunk = rows[start : start + ctx.params.chunk_size]
                steps.append(
                    StepSpec(
                        key=f"half{half}-{start // ctx.params.chunk_size:05d}",
                        item=None,
                        payload={"half": half, "rows": [int(r) for r in chunk]},
                        threads=ctx.params.threads,
                    )
                )
        return steps

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        assert isinstance(ctx.params, ReconstructParams)
        particles = ctx.read_input_set("particles")
        optics = particles.optics_by_id()
        rows = ctx.step.payload["rows"]
        table = particles.table.take(pa.array(rows)).to_pandas()
        box = int(next(iter(optics.values())).image_size_px or 0) or _box_of(ctx, table)
        bp = Backprojector(box, device=ctx.device)
        for optics_group, rows_of_group in table.groupby("optics_group", sort=True):
            group = optics[int(optics_group)]
            for start in range(0, len(rows_of_group), ctx.params.batch_size):
                batch = rows_of_group.iloc[start : start + ctx.params.batch_size]
                images, rotations, ctf, shifts = _batch_tensors(ctx, batch, group, box)
                bp.add(images, rotations, ctf=ctf if ctx.params.ctf else None, shifts_px=shifts)
        torch.save({"data": bp.data.cpu(), "weights": bp.weights.cpu()}, ctx.work_dir / "sums.pt")
        return {"n_particles": len(table), "box_size": box, "half": ctx.step.payload["half"]}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        assert isinstance(ctx.params, ReconstructParams)
        particles = ctx.read_input_set("particles")
        pixel_size = float(particles.optics[0].pixel_size_A)
        box = int(next(iter(results.values()))["box_size"])
        sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for key in sorted(results):
            half = int(results[key]["half"])
            part = torch.load(ctx.step_dir(key) / "sums.pt")
            data, weights = sums.get(half, (0 * part["data"], 0 * part["weights"]))
            sums[half] = (data + part["data"], weights + part["weights"])
        if set(sums) != {1, 2}:
            raise ValueError("both half sets need particles to estimate the resolution")
        maps = {
            h: reconstruct(d, w, box, wiener_constant=ctx.params.wiener_constant)
            for h, (d, w) in sums.items()
        }
        full = reconstruct(
            sums[1][0] + sums[2][0],
            sums[1][1] + sums[2][1],
            box,
            wiener_constant=ctx.params.wiener_constant,
        )
        curve = fsc(maps[1], maps[2])
        freqs = shell_frequencies(box, pixel_size)
        resolution = float(resolution_at_threshold(curve, freqs, 0.143))
        paths = {}
        for name, volume in (("half1", maps[1]), ("half2", maps[2]), ("map", full)):
            paths[name] = ctx.output_path(f"{name}.mrc")
            write_mrc(paths[name], volume.cpu().numpy(), pixel_size_A=pixel_size)
        fsc_path = ctx.output_path("fsc.json")
        fsc_path.write_text(json.dumps(fsc_table(curve, freqs, resolution), indent=1) + "\n")
        n = sum(int(r["n_particles"]) for r in results.values())
        meta = {
            "pixel_size_A": pixel_size,
            "box_size_px": box,
            "resolution_A": resolution,
            "half_maps": [ctx.relative(paths["half1"]), ctx.relative(paths["half2"])],
            "companions": [ctx.relative(paths["half1"]), ctx.relative(paths["half2"])],
        }
        ctx.log(f"reconstructed {n} particles; gold-standard FSC 0.143 at {resolution:.2f} Å")
        return {
            "volume": OutputValue(FileKind.VOLUME, ctx.relative(paths["map"]), n, meta),
            "fsc": OutputValue(
                FileKind.FSC_CURVE, ctx.relative(fsc_path), len(curve), {"resolution_A": resolution}
            ),
        }


def half_sets(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of half sets 1 and 2 (``random_subset``; alternate rows where it is unset)."""
    n = table.num_rows
    if "random_subset" in table.column_names:
        subset = np.asarray(table.column("random_subset").fill_null(0).to_numpy(), dtype=int)
    else:
        subset = np.zeros(n, dtype=int)
    unset = subset == 0
    subset[unset] = 1 + (np.arange(n)[unset] % 2)
    return np.flatnonzero(subset == 1), np.flatnonzero(subset == 2)


def fsc_table(curve: torch.Tensor, freqs: torch.Tensor, resolution_A: float) -> dict[str, Any]:
    """A JSON-ready FSC curve (shell, 1/Å, Å, FSC) with its 0.143 resolution."""
    f = freqs.cpu().double().numpy()
    return {
        "threshold": 0.143,
        "resolution_A": resolution_A,
        "shell": list(range(len(f))),
        "frequency_invA": f.tolist(),
        "resolution_A_per_shell": [float("inf") if x == 0 else 1 / x for x in f],
        "fsc": curve.cpu().double().numpy().tolist(),
    }


def _box_of(ctx: StepContext, table: Any) -> int:
    with open_mrc_stack(ctx.path(table["image_path"].iloc[0])) as stack:
        return int(stack.image_shape[0])


def _batch_tensors(
    ctx: StepContext, batch: Any, group: Any, box: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, pose matrices, CTFs and shifts (px) of a batch of one optics group's rows."""
    device = ctx.device
    images = np.empty((len(batch), box, box), dtype=np.float32)
    positions = np.arange(len(batch))
    for path, rows in batch.groupby("image_path", sort=False):
        where = positions[(batch["image_path"] == path).to_numpy()]
        with open_mrc_stack(ctx.path(str(path))) as stack:
            images[where] = stack.read(rows["image_index"].to_numpy())
    angles = torch.tensor(batch[["rot_deg", "tilt_deg", "psi_deg"]].to_numpy(), dtype=torch.float64)
    rotations = euler_to_matrix(angles).to(device=device, dtype=torch.float32)
    ctf = ctf_2d(
        torch.tensor(batch["defocus_u_A"].to_numpy(), device=device),
        torch.tensor(batch["defocus_v_A"].to_numpy(), device=device),
        torch.tensor(batch["defocus_angle_deg"].to_numpy(), device=device),
        voltage_kV=group.voltage_kV,
        cs_mm=group.cs_mm,
        amplitude_contrast=group.amplitude_contrast,
        pixel_size_A=group.pixel_size_A,
        shape=(box, box),
        phase_shift_deg=torch.tensor(_column(batch, "phase_shift_deg"), device=device),
    ).to(torch.float32)
    origins = np.stack([_column(batch, "origin_x_A"), _column(batch, "origin_y_A")], axis=1)
    shifts = relion_origin_to_shift_px(
        torch.tensor(origins, dtype=torch.float32), group.pixel_size_A
    )
    return torch.from_numpy(images).to(device), rotations, ctf, shifts.to(device)


def _column(batch: Any, name: str) -> np.ndarray:
    if name not in batch:
        return np.zeros(len(batch))
    return np.nan_to_num(batch[name].to_numpy(dtype=float), nan=0.0)
