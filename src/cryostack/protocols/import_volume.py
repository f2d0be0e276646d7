"""Import a 3D map (``import-volume``, with optional half maps) or a mask (``import-mask``).

The map is checked from its header in ``check`` (readable, complete, 3D; half maps of the same
size and pixel size), then written into the run's outputs as a standard MRC2014 file (float32,
axes in (z, y, x) order, the pixel size in effect in its header, the header origin kept), so the
project holds its own copy and later readers need no override. Pixel size: see
:mod:`cryostack.protocols._importing` (header, or ``pixel_size_A``; a contradicting non-zero
header is an error unless ``override_header_pixel_size``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

from cryostack.core.datamodel import FileKind
from cryostack.core.protocol import (
    OutputSpec,
    OutputValue,
    Params,
    Protocol,
    RunContext,
    StepContext,
    StepSpec,
    param,
)
from cryostack.io.mrc import read_mrc, write_mrc
from cryostack.protocols._importing import (
    AbsolutePath,
    Findings,
    ImageHeader,
    ImportProblem,
    publish_file,
    read_header,
    resolve_pixel_size,
    same_pixel_size,
)

STEP = "convert"


class ImportMaskParams(Params):
    file: AbsolutePath = param(..., help="the map (MRC)")
    pixel_size_A: float | None = param(
        None, help="voxel size; empty: from the header (error if it has none)", unit="Å/px", gt=0
    )
    override_header_pixel_size: bool = param(
        False,
        help="use pixel_size_A even where the header has a different non-zero value",
        group="Advanced",
    )


class ImportVolumeParams(ImportMaskParams):
    half_maps: list[AbsolutePath] = param(
        [], help="the two half maps (optional), same size and pixel size as the map"
    )


def _volume_header(path: str, role: str, findings: Findings) -> ImageHeader | None:
    try:
        header = read_header(Path(path))
    except ImportProblem as err:
        findings.problems.append(f"{role} {err}")
        return None
    if header.shape[0] < 2 and not header.is_volume:
        findings.problems.append(
            f"{path}: a 2D image of {header.shape[2]}x{header.shape[1]} px, not a 3D map"
        )
        return None
    return header


def scan_volume(params: ImportMaskParams) -> tuple[list[ImageHeader], float | None, Findings]:
    """Headers of the map (first) and half maps, the pixel size in effect and what is wrong."""
    findings = Findings()
    half_maps = params.half_maps if isinstance(params, ImportVolumeParams) else []
    if half_maps and len(half_maps) != 2:
        findings.problems.append(f"half_maps: give two half maps, not {len(half_maps)}")
    main = _volume_header(params.file, "map", findings)
    headers = [] if main is None else [main]
    for path in half_maps:
        half = _volume_header(path, "half map", findings)
        if half is None:
            continue
        if main is not None and half.shape != main.shape:
            findings.problems.append(
                f"{path}: half map of shape {half.shape} differs from the map's {main.shape}"
            )
        headers.append(half)
    if main is not None and main.pixel_size_A is not None:
        x, y, z = main.voxel_size_A
        if not (same_pixel_size(x, y) and same_pixel_size(x, z)):
            message = (
                f"{params.file}: anisotropic voxel size {x:g} x {y:g} x {z:g} Å (x, y, z); "
                "maps need cubic voxels"
            )
            if params.override_header_pixel_size and params.pixel_size_A is not None:
                findings.notes.append(message + f" (override: using {params.pixel_size_A:g} Å)")
            else:
                findings.problems.append(
                    message + " (resample it, or give pixel_size_A and override_header_pixel_size)"
                )
    if main is not None and len(set(main.shape)) != 1:
        findings.notes.append(f"{params.file}: map is not a cube: {main.shape} (D, H, W)")
    pixel = resolve_pixel_size(
        headers, params.pixel_size_A, params.override_header_pixel_size, findings
    )
    return headers, pixel, findings


def convert_map(source: Path, target: Path, pixel_size_A: float) -> tuple[int, ...]:
    """Write ``source`` as a standard MRC volume with ``pixel_size_A``; return its (D, H, W)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pixel size decided and reported by the scan
        data, info = read_mrc(source, pixel_size_A=pixel_size_A)
    if data.ndim != 3:
        raise ImportProblem(f"{source}: not a 3D map (shape {data.shape})")
    write_mrc(target, data, pixel_size_A, origin_A=info.origin_A)
    return tuple(int(s) for s in data.shape)


class ImportMask(Protocol):
    id = "import-mask"
    name = "Import mask"
    category = "Import"
    help = "Import a 3D mask (MRC, values 0..1) with its voxel size (from the header or given)."
    Params = ImportMaskParams
    outputs = {"mask": OutputSpec(FileKind.MASK, "the mask, MRC")}
    output_name: ClassVar[str] = "mask"

    def check(self, ctx: RunContext) -> list[str]:
        assert isinstance(ctx.params, ImportMaskParams)
        return scan_volume(ctx.params)[2].problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        return [StepSpec(key=STEP)]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        params = ctx.params
        assert isinstance(params, ImportMaskParams)
        headers, pixel, findings = scan_volume(params)
        findings.raise_problems()
        findings.log_notes(ctx)
        assert pixel is not None
        shape = convert_map(Path(params.file), ctx.work_dir / "map.mrc", pixel)
        for i, half in enumerate(headers[1:]):
            convert_map(half.path, ctx.work_dir / f"half{i + 1}.mrc", pixel)
        result: dict[str, Any] = {
            "pixel_size_A": pixel,
            "shape": list(shape),
            "n_half_maps": len(headers) - 1,
        }
        if self.output_name == "mask":
            data, _ = read_mrc(ctx.work_dir / "map.mrc")
            low, high = float(data.min()), float(data.max())
            result["value_range"] = [low, high]
            if low < -1e-3 or high > 1 + 1e-3:
                ctx.log(f"note: mask values span [{low:g}, {high:g}], not [0, 1]")
        ctx.log(f"map of {shape} voxels at {pixel:g} Å/px, {len(headers) - 1} half maps")
        return result

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        result = results[STEP]
        step_dir = ctx.step_dir(STEP)
        target = ctx.output_path(f"{self.output_name}.mrc")
        publish_file(step_dir / "map.mrc", target)
        companions = []
        for i in range(int(result["n_half_maps"])):
            half = ctx.output_path(f"{self.output_name}_half{i + 1}.mrc")
            publish_file(step_dir / f"half{i + 1}.mrc", half)
            companions.append(ctx.relative(half))
        meta: dict[str, Any] = {
            "pixel_size_A": result["pixel_size_A"],
            "shape": result["shape"],
            "source": ctx.params.model_dump()["file"],
        }
        if companions:
            meta["companions"] = companions
            meta["half_maps"] = companions
        if "value_range" in result:
            meta["value_range"] = result["value_range"]
        out_type = self.outputs[self.output_name].type
        return {self.output_name: OutputValue(out_type, ctx.relative(target), None, meta)}


class ImportVolume(ImportMask):
    id = "import-volume"
    name = "Import volume"
    category = "Import"
    help = (
        "Import a 3D map (MRC) with its voxel size (from the header or given) and optionally "
        "its two half maps."
    )
    Params = ImportVolumeParams
    outputs = {"volume": OutputSpec(FileKind.VOLUME, "the map, MRC (half maps as companions)")}
    output_name = "volume"
