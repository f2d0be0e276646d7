"""Movie alignment (motion correction): movies in, aligned (dose-weighted) micrographs out.

One step per movie (:func:`cryostack.em.motion.align_movie`): gain correction from the movie's
optics group, hot-pixel replacement, global alignment, optional patch-based local alignment with
a smooth motion model, dose-weighted and plain sums, optional binning. Per movie the step writes:

- ``<name>.mrc``: the dose-weighted sum (the plain sum when dose weighting is off),
- ``<name>_noDW.mrc``: the plain sum,
- ``<name>_shifts.star``: RELION-style ``data_general`` and ``data_global_shift`` (frame numbers
  are 1-based in the original movie; ``rlnMicrographShiftX/Y`` is the shift that *aligns* the
  frame, i.e. minus its drift, as RELION writes it) plus, with patches, ``data_local_shift``
  (measured patch shifts, same sign) and ``data_cryostack_motion_model`` (the fitted model),
- ``<name>_drift.png``: the drift trajectory.

The output MicrographSet carries ``micrograph_path`` (the first file), ``micrograph_nodw_path``,
``shifts_path``, ``drift_plot_path``, ``total_drift_px``, ``hot_pixels``, the movie path, and
the input's optics groups with the pixel size of the sums (times the binning). A movie that
cannot be read (truncated, wrong frame size, gain reference of another shape) fails alone with
a message naming the file; the others finish. A movie whose frames show no significant
cross-correlation peak (:attr:`cryostack.em.motion.MovieAlignment.aligned` False: too little
signal per frame) is summed unaligned, with zero drift, and a warning in the log.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cryostack.core.datamodel import ItemSet, SetKind
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
from cryostack.core.sets import write_set
from cryostack.em.motion import MovieAlignment, align_movie
from cryostack.io.mrc import open_mrc_stack, read_mrc, write_mrc
from cryostack.io.tiff import open_tiff_movie, read_tiff_movie

SET_FILE = "micrographs.cset"
TIFF_SUFFIXES = (".tif", ".tiff")


class MovieProblem(ValueError):
    """A movie (or its gain reference) cannot be aligned; the message names the file."""


class MotionCorrectionParams(Params):
    patches_x: int = param(0, help="patches along x for local alignment (0: global only)", ge=0)
    patches_y: int = param(0, help="patches along y for local alignment (0: global only)", ge=0)
    bfactor_A2: float = param(
        150.0, help="B-factor of the alignment filter exp(-B k²/4)", unit="Å²", ge=0
    )
    alignment_resolution_A: float = param(
        10.0, help="highest resolution used to align frames", unit="Å", gt=0, group="Advanced"
    )
    max_iterations: int = param(10, help="most refinement passes", ge=1, group="Advanced")
    max_shift_px: float = param(
        60.0, help="largest drift searched, per axis", unit="px", gt=0, group="Advanced"
    )
    frame_first: int = param(1, help="first frame to use (1-based)", ge=1)
    frame_last: int = param(0, help="last frame to use (1-based; 0: the last frame)", ge=0)
    binning: float = param(1.0, help="Fourier binning factor of the sums", ge=1.0)
    dose_weighting: bool = param(True, help="write the dose-weighted sum as the micrograph")
    pre_exposure_e_A2: float = param(
        0.0, help="exposure before the first frame", unit="e/Å²", ge=0, group="Advanced"
    )
    hot_pixel_sigma: float = param(
        6.0,
        help="replace pixels this many std above the mean of the frame sum (0: off)",
        ge=0,
        group="Advanced",
    )
    threads: int = param(2, help="CPU threads per movie", ge=1, group="Resources")


class MotionCorrection(Protocol):
    id = "motion-correction"
    name = "Motion correction"
    category = "Preprocessing"
    help = (
        "Align movie frames (whole-frame, then optionally patch-based local alignment with a "
        "smooth motion model), apply the gain reference, replace hot pixels, and write "
        "dose-weighted and plain sums, per-frame shifts and a drift plot."
    )
    citations = (
        "Grant T, Grigorieff N (2015) eLife 4:e06980 (dose weighting)",
        "Zheng SQ et al. (2017) Nat Methods 14:331-332 (patch-based motion model)",
    )
    Params = MotionCorrectionParams
    inputs = {
        "movies": InputSpec((SetKind.MOVIES,), "movies to align", required_columns=("movie_path",))
    }
    outputs = {"micrographs": OutputSpec(SetKind.MICROGRAPHS, "aligned micrographs")}

    def check(self, ctx: RunContext) -> list[str]:
        p = _params(ctx)
        problems = []
        if p.frame_last and p.frame_last < p.frame_first:
            problems.append(f"frame_last ({p.frame_last}) is before frame_first ({p.frame_first})")
        if (p.patches_x == 0) != (p.patches_y == 0):
            problems.append("give both patches_x and patches_y, or neither (0 = global only)")
        if p.dose_weighting and ctx.has_input("movies"):
            movies = ctx.read_input_set("movies")
            used = set(movies.table.column("optics_group").to_pylist())
            for group in movies.optics:
                if group.optics_group in used and group.dose_per_frame_e_A2 is None:
                    problems.append(
                        f"optics group {group.name!r} has no dose per frame: set it at import "
                        "or turn dose_weighting off"
                    )
        return problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        p = _params(ctx)
        movies = ctx.read_input_set("movies")
        optics = movies.optics_by_id()
        frame_shape = movies.meta.get("frame_shape_px")
        paths = movies.table.column("movie_path").to_pylist()
        groups = movies.table.column("optics_group").to_pylist()
        steps = []
        for name, path, group_id in zip(_unique_names(paths), paths, groups, strict=True):
            group = optics[int(group_id)]
            payload = {
                "name": name,
                "movie_path": path,
                "optics_group": int(group_id),
                "pixel_size_A": group.pixel_size_A,
                "voltage_kV": group.voltage_kV,
                "dose_per_frame_e_A2": group.dose_per_frame_e_A2,
                "gain_reference_path": group.gain_reference_path,
                "frame_shape_px": frame_shape,
            }
            steps.append(
                StepSpec(
                    key=f"movie-{name}", payload=payload, item=name, threads=p.threads, gpu=True
                )
            )
        return steps

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        p = _params(ctx)
        job = ctx.step.payload
        movie = ctx.path(job["movie_path"])
        frames, first, last = read_movie_frames(movie, p.frame_first, p.frame_last)
        expected = job.get("frame_shape_px")
        if expected and tuple(frames.shape[-2:]) != tuple(expected):
            raise MovieProblem(
                f"{movie}: frame size {frames.shape[-1]}x{frames.shape[-2]} px differs from "
                f"{expected[1]}x{expected[0]} px of the other movies in the set"
            )
        device = torch.device(ctx.device)
        gain = None
        if job["gain_reference_path"]:
            gain = read_gain(ctx.path(job["gain_reference_path"]), tuple(frames.shape[-2:]), movie)
            gain = gain.to(device)
        dose = job["dose_per_frame_e_A2"] if p.dose_weighting else None
        result = align_movie(
            torch.from_numpy(frames).to(device),
            job["pixel_size_A"],
            bfactor_A2=p.bfactor_A2,
            alignment_resolution_A=p.alignment_resolution_A,
            patches_x=p.patches_x,
            patches_y=p.patches_y,
            max_iterations=p.max_iterations,
            max_shift_px=p.max_shift_px,
            gain=gain,
            hot_pixel_sigma=p.hot_pixel_sigma or None,
            dose_per_frame_e_A2=dose,
            pre_exposure_e_A2=p.pre_exposure_e_A2,
            voltage_kV=job["voltage_kV"],
            first_frame=first,
            binning=p.binning,
        )
        name = job["name"]
        files = write_outputs(ctx.work_dir, name, result, job, first, tuple(frames.shape), p)
        drift = result.drift_px.numpy()
        steps = np.linalg.norm(np.diff(drift, axis=0), axis=1)
        ctx.log(
            f"{movie.name}: frames {first + 1}-{last}, drift {steps.sum():.1f} px, "
            f"{result.hot_pixels} hot pixels"
        )
        if not result.aligned:
            ctx.log(_not_aligned_message(movie, result))
        return {
            "name": name,
            "movie_path": job["movie_path"],
            "optics_group": job["optics_group"],
            "pixel_size_A": result.pixel_size_A,
            "total_drift_px": float(steps.sum()),
            "hot_pixels": result.hot_pixels,
            "n_frames": int(frames.shape[0]),
            **files,
        }

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        movies = ctx.read_input_set("movies")
        rows = list(results.values())
        step_dirs = [ctx.step_dir(key) for key in results]

        def paths(column: str) -> pa.Array:
            return pa.array(
                [ctx.relative(d / r[column]) for d, r in zip(step_dirs, rows, strict=True)],
                pa.string(),
            )

        table = pa.table(
            {
                "micrograph_path": paths("micrograph_file"),
                "micrograph_name": pa.array([r["name"] for r in rows], pa.string()),
                "optics_group": pa.array([r["optics_group"] for r in rows], pa.int32()),
                "movie_path": pa.array([r["movie_path"] for r in rows], pa.string()),
                "micrograph_nodw_path": paths("nodw_file"),
                "shifts_path": paths("shifts_file"),
                "drift_plot_path": paths("plot_file"),
                "total_drift_px": pa.array([r["total_drift_px"] for r in rows], pa.float64()),
                "hot_pixels": pa.array([r["hot_pixels"] for r in rows], pa.int64()),
                "n_frames": pa.array([r["n_frames"] for r in rows], pa.int32()),
            }
        )
        scale = {r["optics_group"]: r["pixel_size_A"] for r in rows}
        optics = []
        for group in movies.optics:
            if group.optics_group in scale:
                optics.append(group.model_copy(update={"pixel_size_A": scale[group.optics_group]}))
        p = _params(ctx)
        meta = {"source_movies": ctx.input("movies").path, "binning": p.binning}
        target = ctx.output_path(SET_FILE)
        write_set(ItemSet(SetKind.MICROGRAPHS, table, optics, meta), target)
        return {"micrographs": OutputValue(SetKind.MICROGRAPHS, ctx.relative(target), len(rows))}


def _not_aligned_message(movie: Path, result: MovieAlignment) -> str:
    """The warning logged when a movie's frames show no significant correlation peak."""
    median_z = float(result.peak_z.median()) if result.peak_z is not None else float("nan")
    return (
        f"WARNING {movie.name}: no significant cross-correlation peak between the frames "
        f"(median z-score {median_z:.1f} < {result.min_peak_z:.1f}): too little signal per "
        "frame to align on, so the frames were summed without alignment (drift set to 0)"
    )


def _params(ctx: RunContext) -> MotionCorrectionParams:
    assert isinstance(ctx.params, MotionCorrectionParams)
    return ctx.params


def _unique_names(paths: list[str]) -> list[str]:
    """File stems, made unique with a numeric suffix where they repeat."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}_{count + 1}")
    return names


# --------------------------------------------------------------------------------------------
# reading


def read_movie_frames(
    path: Path, frame_first: int = 1, frame_last: int = 0
) -> tuple[np.ndarray, int, int]:
    """Frames ``frame_first..frame_last`` (1-based, inclusive; 0 = last) of an MRC/TIFF movie.

    Returns:
        ``(frames (T, H, W), first, last)`` with ``first`` the 0-based index of the first frame
        read and ``last`` the 1-based index of the last one.

    Raises:
        MovieProblem: missing, unreadable or truncated file, or a frame range outside it.
    """
    if not path.is_file():
        raise MovieProblem(f"{path}: movie file not found")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with open_tiff_movie(path) as tiff:
                n = len(tiff)
                first, last = _frame_range(path, n, frame_first, frame_last)
                return tiff.read(range(first, last)), first, last
        with open_mrc_stack(path) as stack:
            n = len(stack)
            first, last = _frame_range(path, n, frame_first, frame_last)
            return stack.read(slice(first, last)), first, last
    except MovieProblem:
        raise
    except (ValueError, OSError, IndexError) as err:  # FormatError is a ValueError
        message = str(err)
        raise MovieProblem(message if str(path) in message else f"{path}: {message}") from None


def _frame_range(path: Path, n_frames: int, frame_first: int, frame_last: int) -> tuple[int, int]:
    last = n_frames if frame_last == 0 else frame_last
    if last > n_frames or frame_first > last:
        raise MovieProblem(
            f"{path}: frame range {frame_first}-{last} is outside the movie's {n_frames} frames"
        )
    if last - frame_first + 1 < 2:
        raise MovieProblem(f"{path}: need at least 2 frames to align, range {frame_first}-{last}")
    return frame_first - 1, last


def read_gain(path: Path, frame_shape: tuple[int, ...], movie: Path) -> torch.Tensor:
    """A gain reference ``(H, W)`` float32, checked against the movie's frame shape."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            data = read_tiff_movie(path).astype(np.float32)
        else:
            data, _ = read_mrc(path)
    except (ValueError, OSError) as err:
        raise MovieProblem(f"gain reference {path}: {err}") from None
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.shape != tuple(frame_shape):
        raise MovieProblem(
            f"gain reference {path} has shape {_wh(data.shape)} but the frames of {movie} are "
            f"{_wh(frame_shape)} (W x H)"
        )
    return torch.from_numpy(np.array(data, dtype=np.float32))


def _wh(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in reversed(shape))


# --------------------------------------------------------------------------------------------
# writing


def write_outputs(
    folder: Path,
    name: str,
    result: MovieAlignment,
    job: dict[str, Any],
    first_frame: int,
    movie_shape: tuple[int, ...],
    p: MotionCorrectionParams,
) -> dict[str, str]:
    """Write the sums, the shifts STAR file and the drift plot; return their file names."""
    files = {
        "micrograph_file": f"{name}.mrc",
        "nodw_file": f"{name}_noDW.mrc",
        "shifts_file": f"{name}_shifts.star",
        "plot_file": f"{name}_drift.png",
    }
    main = result.dose_weighted_sum if result.dose_weighted_sum is not None else result.aligned_sum
    write_mrc(folder / files["micrograph_file"], main.cpu().numpy(), result.pixel_size_A)
    write_mrc(folder / files["nodw_file"], result.aligned_sum.cpu().numpy(), result.pixel_size_A)
    text = shifts_star(result, job, first_frame, movie_shape, p)
    with atomic_path(folder / files["shifts_file"]) as tmp:
        tmp.write_text(text)
    with atomic_path(folder / files["plot_file"]) as tmp:
        tmp.write_bytes(png_bytes(drift_plot(result.drift_px.numpy())))
    return files


def _loop(name: str, labels: list[str], rows: list[list[Any]]) -> str:
    lines = ["# version 30001", "", f"data_{name}", "", "loop_"]
    lines += [f"_{label} #{i + 1}" for i, label in enumerate(labels)]
    lines += [" ".join(_fmt(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def shifts_star(
    result: MovieAlignment,
    job: dict[str, Any],
    first_frame: int,
    movie_shape: tuple[int, ...],
    p: MotionCorrectionParams,
) -> str:
    """RELION-style shifts file (see the module docstring for the tables and signs)."""
    n, h, w = movie_shape
    general = {
        "rlnImageSizeX": w,
        "rlnImageSizeY": h,
        "rlnImageSizeZ": n,
        "rlnMicrographMovieName": job["movie_path"],
        "rlnMicrographBinning": float(p.binning),
        "rlnMicrographOriginalPixelSize": float(job["pixel_size_A"]),
        "rlnMicrographDoseRate": float(job["dose_per_frame_e_A2"] or 0.0),
        "rlnMicrographPreExposure": float(p.pre_exposure_e_A2),
        "rlnVoltage": float(job["voltage_kV"]),
        "rlnMicrographStartFrame": first_frame + 1,
        "rlnMotionModelVersion": 0,
    }
    text = "# version 30001\n\ndata_general\n\n"
    text += "".join(f"_{k} {_fmt(v)}\n" for k, v in general.items()) + "\n"
    drift = result.drift_px.numpy()
    rows = [[first_frame + t + 1, -float(dx), -float(dy)] for t, (dx, dy) in enumerate(drift)]
    text += _loop(
        "global_shift",
        ["rlnMicrographFrameNumber", "rlnMicrographShiftX", "rlnMicrographShiftY"],
        rows,
    )
    if result.patch_shifts_px is not None and result.patch_centres_px is not None:
        local_rows = []
        for (cx, cy), shifts in zip(
            result.patch_centres_px.tolist(), result.patch_shifts_px.numpy(), strict=True
        ):
            for t, (dx, dy) in enumerate(shifts):
                local_rows.append(
                    [first_frame + t + 1, float(cx), float(cy), -float(dx), -float(dy)]
                )
        text += _loop(
            "local_shift",
            [
                "rlnMicrographFrameNumber",
                "rlnCoordinateX",
                "rlnCoordinateY",
                "rlnMicrographShiftX",
                "rlnMicrographShiftY",
            ],
            local_rows,
        )
    if result.model is not None:
        coefficients = result.model.coefficients.numpy()
        model_rows = [
            [term, m + 1, float(coefficients[0, j, m]), float(coefficients[1, j, m])]
            for j, term in enumerate(result.model.spatial_terms)
            for m in range(coefficients.shape[-1])
        ]
        text += _loop(
            "cryostack_motion_model",
            [
                "cryostackSpatialTerm",
                "cryostackTimePower",
                "cryostackDisplacementX",
                "cryostackDisplacementY",
            ],
            model_rows,
        )
    return text


# --------------------------------------------------------------------------------------------
# drift plot (a tiny PNG writer: no plotting library needed)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 image as PNG (8-bit RGB, zlib-compressed)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _draw_line(
    img: np.ndarray, p0: np.ndarray, p1: np.ndarray, color: tuple[int, int, int]
) -> None:
    n = int(max(abs(p1 - p0).max(), 1) * 2) + 1
    for f in np.linspace(0.0, 1.0, n):
        x, y = np.rint(p0 + f * (p1 - p0)).astype(int)
        img[max(y - 1, 0) : y + 1, max(x - 1, 0) : x + 1] = color


def _draw_dot(img: np.ndarray, p: np.ndarray, color: tuple[int, int, int], r: int = 3) -> None:
    x, y = np.rint(p).astype(int)
    img[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1] = color


def drift_plot(drift_px: np.ndarray, size: int = 320, margin: int = 24) -> np.ndarray:
    """An ``(size, size, 3)`` uint8 plot of a drift trajectory (x right, y down, as in images).

    Grey grid lines every power-of-ten pixels of drift, the path in blue, the first frame in green
    and the last in red.
    """
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    centre = (drift_px.max(0) + drift_px.min(0)) / 2
    extent = max(float((drift_px.max(0) - drift_px.min(0)).max()), 1.0)
    scale = (size - 2 * margin) / extent
    spacing = 10.0 ** math.floor(math.log10(extent))
    for k in range(-20, 21):
        for axis in (0, 1):
            value = math.floor(centre[axis] / spacing) * spacing + k * spacing
            pos = round(size / 2 + (value - centre[axis]) * scale)
            if margin // 2 <= pos < size - margin // 2:
                if axis == 0:
                    img[margin // 2 : size - margin // 2, pos] = 210
                else:
                    img[pos, margin // 2 : size - margin // 2] = 210
    points = size / 2 + (drift_px - centre) * scale
    for a, b in itertools.pairwise(points):
        _draw_line(img, a, b, (30, 80, 200))
    for pt in points:
        _draw_dot(img, pt, (30, 80, 200), r=1)
    _draw_dot(img, points[0], (20, 160, 40))
    _draw_dot(img, points[-1], (200, 30, 30))
    return img
