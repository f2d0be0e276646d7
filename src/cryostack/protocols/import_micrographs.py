"""Import micrographs: a glob of MRC (or single-page TIFF) images plus acquisition values.

Headers only are read. Every file must hold one image (a stack of several is rejected with a
hint to import it as a movie) and all must have the same size. ``micrograph_name`` is the file
name without extension (or the path below the files' common folder when names repeat). Pixel
size: see :mod:`cryostack.protocols._importing` (header, or ``pixel_size_A``; a contradicting
non-zero header is an error unless ``override_header_pixel_size``).
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
    check_same_image_shape,
    match_files,
    publish_set,
    resolve_pixel_size,
    scan_headers,
    set_path,
    unique_names,
)

STEP = "scan"
SET_FILE = "micrographs.cset"


class ImportMicrographsParams(AcquisitionParams):
    files: AbsolutePath = param(
        ...,
        help="micrograph files: a path or glob pattern (e.g. mics/*.mrc), MRC or TIFF; "
        "relative to the current folder, stored absolute",
    )


def scan_micrographs(
    params: ImportMicrographsParams,
) -> tuple[list[ImageHeader], float | None, Findings]:
    """Headers of the micrographs, the pixel size in effect and what is wrong."""
    findings = Findings()
    try:
        paths = match_files(params.files)
    except ImportProblem as err:
        findings.problems.append(str(err))
        return [], None, findings
    headers = scan_headers(paths, findings)
    for h in headers:
        if h.shape[0] != 1:
            kind = "volume" if h.is_volume else "stack"
            findings.problems.append(
                f"{h.path}: a {kind} of {h.shape[0]} images, not one micrograph "
                "(import movies with import-movies)"
            )
    check_same_image_shape(headers, "micrograph", findings)
    pixel = resolve_pixel_size(
        headers, params.pixel_size_A, params.override_header_pixel_size, findings
    )
    return headers, pixel, findings


class ImportMicrographs(Protocol):
    id = "import-micrographs"
    name = "Import micrographs"
    category = "Import"
    help = (
        "Import micrographs (MRC) matching a pattern, with the acquisition values (voltage, Cs, "
        "amplitude contrast) and the pixel size (from the headers or given)."
    )
    Params = ImportMicrographsParams
    outputs = {"micrographs": OutputSpec(SetKind.MICROGRAPHS, "the micrographs")}

    def check(self, ctx: RunContext) -> list[str]:
        assert isinstance(ctx.params, ImportMicrographsParams)
        return scan_micrographs(ctx.params)[2].problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        return [StepSpec(key=STEP)]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        params = ctx.params
        assert isinstance(params, ImportMicrographsParams)
        headers, pixel, findings = scan_micrographs(params)
        findings.raise_problems()
        findings.log_notes(ctx)
        assert pixel is not None
        group = params.optics_group(pixel)
        paths = [h.path for h in headers]
        table = pa.table(
            {
                "micrograph_path": pa.array([set_path(ctx, p) for p in paths], pa.string()),
                "micrograph_name": pa.array(unique_names(paths), pa.string()),
                "optics_group": pa.array([1] * len(paths), pa.int32()),
            }
        )
        meta = {"source": params.files, "micrograph_shape_px": list(headers[0].image_shape)}
        write_set(ItemSet(SetKind.MICROGRAPHS, table, [group], meta), ctx.work_dir / SET_FILE)
        h, w = headers[0].image_shape
        ctx.log(f"{len(paths)} micrographs of {w}x{h} px at {pixel:g} Å/px")
        return {"n_micrographs": len(paths), "pixel_size_A": pixel}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        result = results[STEP]
        return {
            "micrographs": publish_set(
                ctx,
                STEP,
                SET_FILE,
                SetKind.MICROGRAPHS,
                int(result["n_micrographs"]),
                pixel_size_A=result["pixel_size_A"],
            )
        }
