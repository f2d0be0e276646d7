"""``simulate``: micrographs, movies or particle images of a known structure, with the truth.

One run simulates one kind of data from a map (a shipped atomic model, a PDB/mmCIF file, or a
``volume`` input) and registers the data to process plus the ground truth to score against:

=====================  ==================  ==================================================
output                 kinds               what
=====================  ==================  ==================================================
``volume``             all                 the true map (MRC, meta ``pixel_size_A``)
``micrographs``        micrographs         MicrographSet without CTF: the data to process
``movies``             movies              MovieSet (``micrograph_name`` joins the truth)
``particles``          particles           ParticleSet with the true poses, shifts and CTF
``truth_micrographs``  micrographs, movies MicrographSet with the true CTF columns
``truth_coordinates``  micrographs, movies CoordinateSet of true centres (micrograph pixels)
``truth_particles``    all                 ParticleSet of the truth (poses, origins, CTF,
                                           ``micrograph_name`` and coordinates)
``truth_motion``       movies              Table (Parquet) of the true per-frame drift
=====================  ==================  ==================================================

Items are named ``mic_0001``, ``mic_0002``...; the ``micrograph_name`` column joins truth and data
(the movie ``mic_0001.tif`` becomes micrograph ``mic_0001``).

Truth of the movies kind: frame 0 is the reference. ``truth_motion`` has one row per movie and
frame with columns ``micrograph_name``, ``frame`` (0-based), ``shift_x_px``, ``shift_y_px``: the
displacement in movie pixels of the content of that frame relative to frame 0 (a feature at
(x, y) in frame 0 is at (x + shift_x, y + shift_y) in the frame). The local (non-rigid) motion
coefficients of :func:`cryostack.em.simulate.random_local_motion` are stored per movie as JSON
in the Parquet schema metadata under ``cryostack.local_motion``. True coordinates are those of
frame 0; the truth micrograph of a movie is its noise-free, undamaged image (frame 0 geometry)
and its truth particle images are cut from it. Movie frames are Poisson counts whose per-box SNR
of the (perfectly aligned) frame sum is ``snr``, radiation damage included, as for a micrograph
(:func:`cryostack.em.simulate.movie_contrast_for_snr` sets the contrast): integer counts (uint8 or
uint16) without a gain, else ``counts / gain`` as float32 with the gain reference (multiply the
frames by it) in the optics group.

Truth particles of micrographs: boxes of ``box_size_px`` centred on the rounded true centre, cut
from the micrograph with RELION contrast (protein white); ``coord_x_px`` is the rounded centre and
``origin_x_A = (coord_x_px - true_x) * pixel_size_A``, so RELION's centre formula gives the true
centre back.

Every random number comes from the step's seed (``ctx.step_seed``), so re-runs and continued runs
write identical files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cryostack.core.datamodel import REQUIRED_COLUMNS, FileKind, ItemSet, OpticsGroup, SetKind
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
from cryostack.core.sets import column_type, write_set
from cryostack.em.rotations import matrix_to_euler, random_rotations
from cryostack.em.simulate import (
    extract_boxes,
    movie_contrast_for_snr,
    simulate_micrograph,
    simulate_movie,
    simulate_particle_images,
)
from cryostack.io.atomic_model import SHIPPED_MODELS, model_to_map, shipped_model_path
from cryostack.io.mrc import MrcStackWriter, read_mrc, write_mrc
from cryostack.io.tiff import write_tiff_movie

_GAIN_SIGMA = 0.1


class SimulateParams(Params):
    kind: Literal["micrographs", "movies", "particles"] = param(
        "micrographs", help="what to simulate"
    )
    model: str = param(
        "trpv1",
        help="shipped model name (trpv1) or a PDB/mmCIF file; unused with a volume input",
        group="Structure",
    )
    pixel_size_A: float = param(
        3.0, help="pixel size (unused with a volume input)", unit="Å", group="Structure", gt=0
    )
    box_size_px: int = param(
        64, help="map and particle box (unused with a volume input)", group="Structure", ge=16
    )
    bfactor_A2: float = param(
        0.0, help="extra B-factor blur of the map", unit="Å²", group="Structure"
    )
    snr: float = param(0.05, help="signal-to-noise ratio over a particle box", gt=0)
    voltage_kV: float = param(300.0, help="acceleration voltage", unit="kV", group="Optics", gt=0)
    cs_mm: float = param(2.7, help="spherical aberration", unit="mm", group="Optics", ge=0)
    amplitude_contrast: float = param(0.1, help="amplitude contrast Q0", group="Optics", ge=0, lt=1)
    defocus_min_A: float = param(10000.0, help="smallest mean defocus", unit="Å", group="CTF", gt=0)
    defocus_max_A: float = param(25000.0, help="largest mean defocus", unit="Å", group="CTF", gt=0)
    astigmatism_max_A: float = param(
        1000.0, help="largest astigmatism U - V", unit="Å", group="CTF", ge=0
    )
    n_micrographs: int = param(4, help="micrographs or movies", group="Micrographs", ge=1)
    micrograph_size_px: int = param(
        1024, help="micrograph edge", unit="px", group="Micrographs", ge=32
    )
    particles_per_micrograph: int = param(
        40, help="particles per micrograph", group="Micrographs", ge=0
    )
    ice_gradient: float = param(
        1.0,
        help="ice-thickness ramp across a micrograph, in particle-signal std",
        group="Micrographs",
    )
    n_frames: int = param(16, help="frames per movie", group="Movies", ge=2)
    dose_per_frame_e_A2: float = param(
        1.0, help="dose per frame", unit="e/Å²", group="Movies", gt=0
    )
    drift_px_per_frame: float = param(
        1.0, help="global drift speed", unit="px", group="Movies", ge=0
    )
    local_motion_px: float = param(
        0.5, help="scale of the local (non-rigid) motion", unit="px", group="Movies", ge=0
    )
    gain: bool = param(False, help="apply a gain (float32 frames + gain reference)", group="Movies")
    movie_format: Literal["auto", "tiff", "mrc"] = param(
        "auto",
        help="movie files: auto = TIFF counts without gain, float32 MRC with gain",
        group="Movies",
    )
    n_particles: int = param(2000, help="particle images", group="Particles", ge=1)
    particles_per_chunk: int = param(500, help="images per stack / step", group="Particles", ge=1)
    shift_std_A: float = param(
        3.0, help="std of the random origins", unit="Å", group="Particles", ge=0
    )
    random_subset: Literal["alternating", "random"] = param(
        "alternating", help="half-set assignment: 1, 2, 1, 2... or random", group="Particles"
    )


class Simulate(Protocol):
    id = "simulate"
    name = "Simulate data with ground truth"
    category = "Simulation"
    help = (
        "Simulates micrographs, movies or particle images of a known map and registers the "
        "ground truth (CTF, coordinates, poses, drift) for scoring."
    )
    Params = SimulateParams
    inputs = {
        "volume": InputSpec(
            (FileKind.VOLUME,), "map to simulate from (else the model)", optional=True
        )
    }
    outputs = {
        "volume": OutputSpec(FileKind.VOLUME, "the true map"),
        "movies": OutputSpec(SetKind.MOVIES, "simulated movies"),
        "micrographs": OutputSpec(SetKind.MICROGRAPHS, "simulated micrographs (no CTF)"),
        "particles": OutputSpec(SetKind.PARTICLES, "simulated particles with true poses/CTF"),
        "truth_micrographs": OutputSpec(SetKind.MICROGRAPHS, "micrographs with the true CTF"),
        "truth_coordinates": OutputSpec(SetKind.COORDINATES, "true particle centres"),
        "truth_particles": OutputSpec(SetKind.PARTICLES, "true poses, origins and CTF"),
        "truth_motion": OutputSpec(FileKind.TABLE, "true per-frame drift (Parquet)"),
    }

    # -- planning ----------------------------------------------------------------------------
    def check(self, ctx: RunContext) -> list[str]:
        p = _params(ctx)
        problems = []
        if p.defocus_max_A < p.defocus_min_A:
            problems.append(
                f"defocus_max_A ({p.defocus_max_A}) is below defocus_min_A ({p.defocus_min_A})"
            )
        if p.astigmatism_max_A / 2 >= p.defocus_min_A:
            problems.append("astigmatism_max_A must be below twice defocus_min_A")
        known = ctx.has_input("volume") or p.model in SHIPPED_MODELS
        if not known and not Path(p.model).is_file():
            problems.append(
                f"model {p.model!r} is neither a shipped model "
                f"({', '.join(SHIPPED_MODELS)}) nor an existing PDB/mmCIF file"
            )
        if p.kind != "particles" and p.micrograph_size_px < p.box_size_px + 4:
            problems.append(
                f"micrograph_size_px ({p.micrograph_size_px}) must exceed box_size_px + 4"
            )
        return problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        p = _params(ctx)
        steps = [StepSpec(key="volume")]
        deps: tuple[str, ...] = ("volume",)
        if p.kind == "movies" and p.gain:
            steps.append(StepSpec(key="gain"))
            deps = ("volume", "gain")
        if p.kind == "particles":
            n_chunks = math.ceil(p.n_particles / p.particles_per_chunk)
            for i in range(n_chunks):
                first = i * p.particles_per_chunk
                count = min(p.particles_per_chunk, p.n_particles - first)
                steps.append(
                    StepSpec(
                        key=f"particles-{i + 1:04d}",
                        item=f"particles {first + 1}-{first + count}",
                        payload={"chunk": i + 1, "first": first, "count": count},
                        depends_on=deps,
                    )
                )
        else:
            for i in range(p.n_micrographs):
                name = _mic_name(i)
                steps.append(StepSpec(key=name, item=name, payload={"name": name}, depends_on=deps))
        return steps

    # -- steps -------------------------------------------------------------------------------
    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        p = _params(ctx)
        if ctx.step.key == "volume":
            return _volume_step(ctx, p)
        if ctx.step.key == "gain":
            return _gain_step(ctx, p)
        if p.kind == "particles":
            return _particles_step(ctx, p)
        if p.kind == "movies":
            return _movie_step(ctx, p)
        return _micrograph_step(ctx, p)

    # -- gathering ---------------------------------------------------------------------------
    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        p = _params(ctx)
        vol = results["volume"]
        volume_path = ctx.relative(ctx.step_dir("volume") / "volume.mrc")
        volume_meta = {
            "pixel_size_A": vol["pixel_size_A"],
            "box_size_px": vol["box_size_px"],
            "particle_diameter_A": vol["particle_diameter_A"],
        }
        outputs = {"volume": OutputValue(FileKind.VOLUME, volume_path, 1, volume_meta)}
        if p.kind == "particles":
            items = [k for k in results if k.startswith("particles-")]
            outputs.update(_finish_particles(ctx, p, items, vol))
        else:
            outputs.update(_finish_micrographs(ctx, p, results, vol, "gain" in results))
        return outputs


# --------------------------------------------------------------------------------------------
# helpers


def _params(ctx: RunContext) -> SimulateParams:
    assert isinstance(ctx.params, SimulateParams)
    return ctx.params


def _mic_name(index: int) -> str:
    return f"mic_{index + 1:04d}"


def _generator(ctx: StepContext) -> torch.Generator:
    return torch.Generator().manual_seed(int(ctx.step_seed))


def _load_volume(ctx: StepContext) -> tuple[torch.Tensor, float]:
    """The true map written by the volume step, ``(N, N, N)`` float32, and its voxel size in Å."""
    data, info = read_mrc(ctx.step_dir("volume") / "volume.mrc")
    assert info.pixel_size_A is not None
    return torch.from_numpy(np.array(data, dtype=np.float32)), float(info.pixel_size_A)


def particle_diameter_A(volume: np.ndarray, pixel_size_A: float, fraction: float = 0.05) -> float:
    """Diameter of the particle: twice the largest distance from the box centre (``N // 2``) of a
    voxel above ``fraction`` of the map's maximum, in Å."""
    n = volume.shape[-1]
    zz, yy, xx = np.nonzero(volume > fraction * float(volume.max()))
    if zz.size == 0:
        return float(n * pixel_size_A)
    r2 = (zz - n // 2) ** 2 + (yy - n // 2) ** 2 + (xx - n // 2) ** 2
    return float(2.0 * math.sqrt(float(r2.max())) * pixel_size_A)


def _volume_step(ctx: StepContext, p: SimulateParams) -> dict[str, Any]:
    if ctx.has_input("volume"):
        ref = ctx.input("volume")
        data, info = read_mrc(ctx.path(ref.path))
        pixel_size_A = float(ref.meta.get("pixel_size_A") or info.pixel_size_A or 0.0)
        if data.ndim != 3 or len(set(data.shape)) != 1:
            raise ValueError(f"{ref.path}: the volume must be cubic, got shape {data.shape}")
        if pixel_size_A <= 0:
            raise ValueError(f"{ref.path}: the volume has no pixel size")
    else:
        path = shipped_model_path(p.model) if p.model in SHIPPED_MODELS else Path(p.model)
        pixel_size_A = p.pixel_size_A
        data = model_to_map(
            path, pixel_size_A=pixel_size_A, box_size_px=p.box_size_px, bfactor_A2=p.bfactor_A2
        )
    data = np.ascontiguousarray(data, dtype=np.float32)
    write_mrc(ctx.work_dir / "volume.mrc", data, pixel_size_A)
    return {
        "pixel_size_A": pixel_size_A,
        "box_size_px": int(data.shape[-1]),
        "particle_diameter_A": particle_diameter_A(data, pixel_size_A),
    }


def _gain_step(ctx: StepContext, p: SimulateParams) -> dict[str, Any]:
    g = _generator(ctx)
    size = p.micrograph_size_px
    gain = (1.0 + _GAIN_SIGMA * torch.randn((size, size), generator=g)).clamp(min=0.1)
    write_mrc(ctx.work_dir / "gain.mrc", gain.numpy().astype(np.float32), 1.0)
    return {}


def _random_ctf(
    n: int, p: SimulateParams, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(n,)`` defocus U, V (Å, U >= V) and angle (deg in [0, 180)): mean defocus uniform in
    [min, max], astigmatism uniform in [0, max]."""
    r = torch.rand((n, 3), generator=g, dtype=torch.float64)
    mean = p.defocus_min_A + r[:, 0] * (p.defocus_max_A - p.defocus_min_A)
    astig = r[:, 1] * p.astigmatism_max_A
    return mean + astig / 2, mean - astig / 2, r[:, 2] * 180.0


def _micrograph_truth(
    ctx: StepContext, p: SimulateParams, snr: float
) -> tuple[torch.Tensor, Any, tuple[float, float, float], float, torch.Generator]:
    """Simulate the step's micrograph; returns it, its truth, CTF, pixel size and the generator."""
    volume, pixel_size_A = _load_volume(ctx)
    g = _generator(ctx)
    u, v, angle = (float(x[0]) for x in _random_ctf(1, p, g))
    size = (p.micrograph_size_px, p.micrograph_size_px)
    try:
        micrograph, truth = simulate_micrograph(
            volume,
            p.particles_per_micrograph,
            size,
            pixel_size_A=pixel_size_A,
            defocus_u_A=u,
            defocus_v_A=v,
            defocus_angle_deg=angle,
            snr=snr,
            ice_gradient=p.ice_gradient,
            generator=g,
            voltage_kV=p.voltage_kV,
            cs_mm=p.cs_mm,
            amplitude_contrast=p.amplitude_contrast,
        )
    except ValueError as exc:
        raise ValueError(f"{ctx.step.key}: {exc}; lower particles_per_micrograph") from exc
    return micrograph, truth, (u, v, angle), pixel_size_A, g


def _write_truth_particles(
    ctx: StepContext, image: torch.Tensor, positions: torch.Tensor, box: int, pixel_size_A: float
) -> None:
    """Cut RELION-contrast boxes (protein white) at the rounded true centres into a stack."""
    if positions.shape[0] == 0:
        return
    boxes = -extract_boxes(image, positions, box)
    with MrcStackWriter(ctx.work_dir / "particles.mrcs", (box, box), pixel_size_A) as out:
        out.write(boxes.numpy())


def _save_particle_truth(ctx: StepContext, truth: Any, ctf: tuple[float, float, float]) -> None:
    """The step's truth for ``finish``: centres (x, y) px, Euler angles (deg), CTF (Å, Å, deg)."""
    np.savez(
        ctx.work_dir / "truth.npz",
        positions_px=truth.positions_px.to(torch.float64).numpy(),
        euler_deg=truth.euler_deg.to(torch.float64).numpy(),
        ctf=np.array(ctf, dtype=np.float64),
    )


def _micrograph_step(ctx: StepContext, p: SimulateParams) -> dict[str, Any]:
    micrograph, truth, ctf, pixel_size_A, _ = _micrograph_truth(ctx, p, p.snr)
    name = ctx.step.payload["name"]
    write_mrc(ctx.work_dir / f"{name}.mrc", micrograph.numpy(), pixel_size_A)
    box = int(_load_volume(ctx)[0].shape[-1])
    _write_truth_particles(ctx, micrograph, truth.positions_px, box, pixel_size_A)
    _save_particle_truth(ctx, truth, ctf)
    return _micrograph_result(name, ctf, truth, box)


def _micrograph_result(
    name: str, ctf: tuple[float, float, float], truth: Any, box: int
) -> dict[str, Any]:
    return {
        "name": name,
        "defocus_u_A": ctf[0],
        "defocus_v_A": ctf[1],
        "defocus_angle_deg": ctf[2],
        "n_particles": int(truth.positions_px.shape[0]),
        "box_size_px": box,
        "noise_std": truth.noise_std,
        "signal_std": truth.signal_std,
    }


def _movie_step(ctx: StepContext, p: SimulateParams) -> dict[str, Any]:
    clean, truth, ctf, pixel_size_A, g = _micrograph_truth(ctx, p, math.inf)
    name = ctx.step.payload["name"]
    signal = clean / max(truth.signal_std, 1e-12)
    box = int(_load_volume(ctx)[0].shape[-1])
    contrast = movie_contrast_for_snr(
        signal,
        p.snr,
        p.n_frames,
        dose_per_frame_e_A2=p.dose_per_frame_e_A2,
        pixel_size_A=pixel_size_A,
        voltage_kV=p.voltage_kV,
        positions_px=truth.positions_px,
        box_px=box,
    )
    frames, motion = simulate_movie(
        signal,
        p.n_frames,
        dose_per_frame_e_A2=p.dose_per_frame_e_A2,
        pixel_size_A=pixel_size_A,
        contrast=contrast,
        drift_px_per_frame=p.drift_px_per_frame,
        local_motion_px=p.local_motion_px,
        voltage_kV=p.voltage_kV,
        generator=g,
    )
    movie = frames.numpy()
    if p.gain:
        gain, _ = read_mrc(ctx.step_dir("gain") / "gain.mrc")
        movie = (movie.astype(np.float32) / gain).astype(np.float32)
    use_tiff = p.movie_format == "tiff" or (p.movie_format == "auto" and not p.gain)
    if use_tiff:
        movie_file = f"{name}.tif"
        write_tiff_movie(ctx.work_dir / movie_file, movie)
    else:
        movie_file = f"{name}.mrcs"
        data = movie if p.gain else movie.astype(np.uint16)
        write_mrc(ctx.work_dir / movie_file, data, pixel_size_A, stack=True)
    write_mrc(ctx.work_dir / f"{name}_truth.mrc", clean.numpy(), pixel_size_A)
    _write_truth_particles(ctx, clean, truth.positions_px, box, pixel_size_A)
    _save_particle_truth(ctx, truth, ctf)
    np.savez(
        ctx.work_dir / "motion.npz",
        drift_px=motion.drift_px.numpy(),
        local_coefficients=motion.local_coefficients.numpy(),
    )
    result = _micrograph_result(name, ctf, truth, box)
    result.update(movie_file=movie_file, contrast=contrast, dtype=str(movie.dtype))
    return result


def _particles_step(ctx: StepContext, p: SimulateParams) -> dict[str, Any]:
    volume, pixel_size_A = _load_volume(ctx)
    g = _generator(ctx)
    count, first = int(ctx.step.payload["count"]), int(ctx.step.payload["first"])
    rotations = random_rotations(count, g, dtype=torch.float64)
    shifts_A = p.shift_std_A * torch.randn((count, 2), generator=g, dtype=torch.float64)
    u, v, angle = _random_ctf(count, p, g)
    if p.random_subset == "alternating":
        subset = 1 + (first + np.arange(count)) % 2
    else:
        subset = 1 + torch.randint(0, 2, (count,), generator=g).numpy()
    images = simulate_particle_images(
        volume,
        rotations.to(volume.dtype),
        shifts_A.to(volume.dtype),
        pixel_size_A=pixel_size_A,
        defocus_u_A=u.to(volume.dtype),
        defocus_v_A=v.to(volume.dtype),
        defocus_angle_deg=angle.to(volume.dtype),
        snr=p.snr,
        generator=g,
        voltage_kV=p.voltage_kV,
        cs_mm=p.cs_mm,
        amplitude_contrast=p.amplitude_contrast,
    )
    n = int(volume.shape[-1])
    with MrcStackWriter(ctx.work_dir / "particles.mrcs", (n, n), pixel_size_A) as out:
        out.write(images.numpy())
    np.savez(
        ctx.work_dir / "truth.npz",
        euler_deg=matrix_to_euler(rotations).numpy(),
        origin_A=shifts_A.numpy(),
        defocus=torch.stack([u, v, angle], dim=-1).numpy(),
        random_subset=subset.astype(np.int32),
    )
    return {"count": count, "first": first}


# --------------------------------------------------------------------------------------------
# finishing


_EULER = ("rot_deg", "tilt_deg", "psi_deg")


class _Columns(dict[str, list[Any]]):
    """Columns of a set being built: ``add(n, name=value-or-sequence, ...)`` appends n rows."""

    def add(self, n: int, **values: Any) -> None:
        for name, value in values.items():
            rows = list(value) if isinstance(value, list | np.ndarray) else [value] * n
            self.setdefault(name, []).extend(rows)

    def add_ctf(self, defocus: np.ndarray) -> None:
        """Append ``(n, 3)`` [U, V, angle] rows (Å, Å, degrees) as CTF columns."""
        d = np.asarray(defocus, dtype=np.float64).reshape(-1, 3)
        self.add(len(d), defocus_u_A=d[:, 0], defocus_v_A=d[:, 1], defocus_angle_deg=d[:, 2])
        self.add(len(d), phase_shift_deg=0.0)

    def add_pose(self, euler_deg: np.ndarray, origin_A: np.ndarray) -> None:
        """Append ``(n, 3)`` RELION Euler angles (deg) and ``(n, 2)`` origins (Å)."""
        self.add(len(euler_deg), **{c: euler_deg[:, i] for i, c in enumerate(_EULER)})
        self.add(len(origin_A), origin_x_A=origin_A[:, 0], origin_y_A=origin_A[:, 1])

    def item_set(self, kind: SetKind, optics: OpticsGroup, meta: dict[str, Any]) -> ItemSet:
        """The set, with declared column types (also when there are no rows)."""
        names = list(self) + [c for c in REQUIRED_COLUMNS[kind] if c not in self]
        arrays = [pa.array(self.get(n, []), type=column_type(kind, n)) for n in names]
        return ItemSet(kind, pa.Table.from_arrays(arrays, names=names), [optics], meta)


def _optics(p: SimulateParams, pixel_size_A: float, **extra: Any) -> OpticsGroup:
    return OpticsGroup(
        pixel_size_A=pixel_size_A,
        voltage_kV=p.voltage_kV,
        cs_mm=p.cs_mm,
        amplitude_contrast=p.amplitude_contrast,
        **extra,
    )


def _set_meta(p: SimulateParams, vol: dict[str, Any]) -> dict[str, Any]:
    return {
        "simulated": True,
        "kind": p.kind,
        "snr": p.snr,
        "particle_diameter_A": vol["particle_diameter_A"],
    }


def _write_output(
    ctx: RunContext, name: str, item_set: ItemSet, companions: list[str], vol: dict[str, Any]
) -> OutputValue:
    """Write a set under ``outputs/``; its data files are companions (in its content hash)."""
    target = ctx.output_path(f"{name}.arrow")
    write_set(item_set, target)
    meta = {"particle_diameter_A": vol["particle_diameter_A"], "companions": sorted(companions)}
    return OutputValue(item_set.kind.value, ctx.relative(target), len(item_set), meta)


def _finish_particles(
    ctx: RunContext, p: SimulateParams, keys: list[str], vol: dict[str, Any]
) -> dict[str, OutputValue]:
    columns = _Columns()
    stacks = []
    for key in sorted(keys):
        truth = np.load(ctx.step_dir(key) / "truth.npz")
        stacks.append(ctx.relative(ctx.step_dir(key) / "particles.mrcs"))
        n = truth["euler_deg"].shape[0]
        columns.add(n, image_path=stacks[-1], image_index=np.arange(n), optics_group=1)
        columns.add_ctf(truth["defocus"])
        columns.add_pose(truth["euler_deg"], truth["origin_A"])
        columns.add(n, random_subset=truth["random_subset"])
    optics = _optics(p, float(vol["pixel_size_A"]), image_size_px=int(vol["box_size_px"]))
    item_set = columns.item_set(SetKind.PARTICLES, optics, _set_meta(p, vol))
    return {
        "particles": _write_output(ctx, "particles", item_set, stacks, vol),
        "truth_particles": _write_output(ctx, "truth_particles", item_set, stacks, vol),
    }


def _finish_micrographs(
    ctx: RunContext,
    p: SimulateParams,
    results: dict[str, dict[str, Any]],
    vol: dict[str, Any],
    has_gain: bool,
) -> dict[str, OutputValue]:
    """The sets of the micrographs and movies kinds, read from the steps' files."""
    pixel_size_A = float(vol["pixel_size_A"])
    movies = p.kind == "movies"
    names = sorted(k for k in results if k not in ("volume", "gain"))
    mics, coords, parts, motion = _Columns(), _Columns(), _Columns(), _Columns()
    local: dict[str, Any] = {}
    data_files, truth_files, stacks = [], [], []
    for name in names:
        step = ctx.step_dir(name)
        truth = np.load(step / "truth.npz")
        mic_file = ctx.relative(step / (f"{name}_truth.mrc" if movies else f"{name}.mrc"))
        truth_files.append(mic_file)
        mics.add(1, micrograph_path=mic_file, micrograph_name=name, optics_group=1)
        if movies:
            data_files.append(ctx.relative(step / results[name]["movie_file"]))
            mics.add(1, movie_path=data_files[-1])
            drift = np.load(step / "motion.npz")
            shifts = drift["drift_px"]
            motion.add(len(shifts), micrograph_name=name, frame=np.arange(len(shifts)))
            motion.add(len(shifts), shift_x_px=shifts[:, 0], shift_y_px=shifts[:, 1])
            local[name] = drift["local_coefficients"].tolist()
        else:
            data_files.append(mic_file)
        mics.add_ctf(truth["ctf"])
        xy = truth["positions_px"]
        n = len(xy)
        coords.add(n, micrograph_name=name, coord_x_px=xy[:, 0], coord_y_px=xy[:, 1], score=1.0)
        if n:
            stacks.append(ctx.relative(step / "particles.mrcs"))
            rounded = np.round(xy)
            parts.add(n, image_path=stacks[-1], image_index=np.arange(n), micrograph_name=name)
            parts.add(n, coord_x_px=rounded[:, 0], coord_y_px=rounded[:, 1], optics_group=1)
            parts.add_ctf(np.repeat(truth["ctf"][None], n, axis=0))
            parts.add_pose(truth["euler_deg"], (rounded - xy) * pixel_size_A)
    meta = _set_meta(p, vol)
    optics = _optics(p, pixel_size_A)
    outputs: dict[str, OutputValue] = {}
    if movies:
        gain = ctx.relative(ctx.step_dir("gain") / "gain.mrc") if has_gain else None
        movie_optics = _optics(
            p, pixel_size_A, dose_per_frame_e_A2=p.dose_per_frame_e_A2, gain_reference_path=gain
        )
        movie_columns = _Columns()
        movie_columns.add(len(names), movie_path=data_files, micrograph_name=names)
        movie_columns.add(len(names), optics_group=1, n_frames=p.n_frames)
        movie_set = movie_columns.item_set(SetKind.MOVIES, movie_optics, meta)
        companions = data_files + ([gain] if gain else [])
        outputs["movies"] = _write_output(ctx, "movies", movie_set, companions, vol)
        outputs["truth_motion"] = _write_motion(ctx, motion, local)
    else:
        data = _Columns(
            {
                k: v
                for k, v in mics.items()
                if k in ("micrograph_path", "micrograph_name", "optics_group")
            }
        )
        mic_set = data.item_set(SetKind.MICROGRAPHS, optics, meta)
        outputs["micrographs"] = _write_output(ctx, "micrographs", mic_set, data_files, vol)
    truth_set = mics.item_set(SetKind.MICROGRAPHS, optics, meta)
    outputs["truth_micrographs"] = _write_output(
        ctx, "truth_micrographs", truth_set, truth_files, vol
    )
    coord_set = coords.item_set(SetKind.COORDINATES, optics, meta)
    outputs["truth_coordinates"] = _write_output(ctx, "truth_coordinates", coord_set, [], vol)
    part_optics = _optics(
        p, pixel_size_A, micrograph_pixel_size_A=pixel_size_A, image_size_px=vol["box_size_px"]
    )
    part_set = parts.item_set(SetKind.PARTICLES, part_optics, meta)
    outputs["truth_particles"] = _write_output(ctx, "truth_particles", part_set, stacks, vol)
    return outputs


def _write_motion(ctx: RunContext, motion: _Columns, local: dict[str, Any]) -> OutputValue:
    """The drift table as Parquet (see the module docstring for its columns)."""
    table = pa.table(
        {
            "micrograph_name": pa.array(motion["micrograph_name"], pa.string()),
            "frame": pa.array(motion["frame"], pa.int32()),
            "shift_x_px": pa.array(motion["shift_x_px"], pa.float64()),
            "shift_y_px": pa.array(motion["shift_y_px"], pa.float64()),
        }
    )
    local_json = json.dumps(local, sort_keys=True, separators=(",", ":"))
    table = table.replace_schema_metadata({"cryostack.local_motion": local_json})
    target = ctx.output_path("truth_motion.parquet")
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    meta = {"content": "drift", "columns": table.column_names, "reference_frame": 0}
    return OutputValue(FileKind.TABLE, ctx.relative(target), len(local), meta)
