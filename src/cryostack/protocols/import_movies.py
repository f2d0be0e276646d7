"""Import movies: a glob of MRC/TIFF frame stacks plus acquisition values and a gain reference.

Headers only are read (frame count and size, MRC pixel size), so an import of thousands of movies
is quick. All movies must have the same frame size (one detector); a gain reference must be one
image of that size. The output is a MovieSet with one optics group carrying the acquisition
values, the dose per frame and the gain reference path.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from cryostack.core.datamodel import ItemSet, SetKind
from cryostack.core.protocol import (
    OutputSpec,
    OutputValue,
    Protocol,
    RunContext,
    StepContext,
    StepSpec,
    param,
)
from cryostack.core.sets import write_set
from cryostack.protocols._importing import (
    AbsolutePath,
    AcquisitionParams,
    Findings,
    ImageHeader,
    ImportProblem,
    check_gain_reference,
    check_same_image_shape,
    match_files,
    publish_set,
    resolve_pixel_size,
    scan_headers,
    set_path,
)

STEP = "scan"
SET_FILE = "movies.cset"


class ImportMoviesParams(AcquisitionParams):
    files: AbsolutePath = param(
        ...,
        help="movie files: a path or glob pattern (e.g. data/*.tiff, **/*.mrc), MRC or TIFF; "
        "relative to the current folder, stored absolute",
    )
    gain_reference_path: AbsolutePath | None = param(
        None, help="gain reference (MRC or TIFF), one image of the frame size"
    )
    dose_per_frame_e_A2: float | None = param(
        None, help="electron dose per frame", unit="e/Å²", ge=0
    )


def scan_movies(params: ImportMoviesParams) -> tuple[list[ImageHeader], float | None, Findings]:
    """Headers of the movies, the pixel size in effect and what is wrong (see module doc)."""
    findings = Findings()
    try:
        paths = match_files(params.files)
    except ImportProblem as err:
        findings.problems.append(str(err))
        return [], None, findings
    headers = scan_headers(paths, findings)
    check_same_image_shape(headers, "frame", findings)
    frame_shape = headers[0].image_shape if headers else None
    check_gain_reference(params.gain_reference_path, frame_shape, findings)
    pixel = resolve_pixel_size(
        headers, params.pixel_size_A, params.override_header_pixel_size, findings
    )
    counts = sorted({h.shape[0] for h in headers})
    if len(counts) > 1:
        findings.notes.append(f"movies have different frame counts: {counts}")
    single = [h for h in headers if h.shape[0] == 1]
    if single:
        findings.notes.append(f"{len(single)} movie(s) have a single frame, e.g. {single[0].path}")
    return headers, pixel, findings


class ImportMovies(Protocol):
    id = "import-movies"
    name = "Import movies"
    category = "Import"
    help = (
        "Import MRC or TIFF movies matching a pattern, with the acquisition values (voltage, Cs, "
        "amplitude contrast, pixel size, dose per frame) and an optional gain reference."
    )
    Params = ImportMoviesParams
    outputs = {"movies": OutputSpec(SetKind.MOVIES, "the movies, one optics group")}

    def check(self, ctx: RunContext) -> list[str]:
        assert isinstance(ctx.params, ImportMoviesParams)
        return scan_movies(ctx.params)[2].problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        return [StepSpec(key=STEP)]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        params = ctx.params
        assert isinstance(params, ImportMoviesParams)
        headers, pixel, findings = scan_movies(params)
        findings.raise_problems()
        findings.log_notes(ctx)
        assert pixel is not None
        group = params.optics_group(
            pixel,
            dose_per_frame_e_A2=params.dose_per_frame_e_A2,
            gain_reference_path=(
                set_path(ctx, params.gain_reference_path) if params.gain_reference_path else None
            ),
        )
        table = pa.table(
            {
                "movie_path": pa.array([set_path(ctx, h.path) for h in headers], pa.string()),
                "optics_group": pa.array([1] * len(headers), pa.int32()),
                "n_frames": pa.array([h.shape[0] for h in headers], pa.int32()),
            }
        )
        meta = {
            "source": params.files,
            "frame_shape_px": list(headers[0].image_shape),
        }
        write_set(ItemSet(SetKind.MOVIES, table, [group], meta), ctx.work_dir / SET_FILE)
        h, w = headers[0].image_shape
        ctx.log(f"{len(headers)} movies of {w}x{h} px at {pixel:g} Å/px")
        return {"n_movies": len(headers), "pixel_size_A": pixel}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        result = results[STEP]
        return {
            "movies": publish_set(
                ctx,
                STEP,
                SET_FILE,
                SetKind.MOVIES,
                int(result["n_movies"]),
                pixel_size_A=result["pixel_size_A"],
            )
        }
