"""Helpers shared by the import protocols: paths, header scans, pixel sizes, acquisition values.

Import protocols check everything they can from file headers in ``Protocol.check`` (run by
``Project.validate`` before a run is recorded), so bad input gives a clear message naming the
file and the problem and leaves the project unchanged. The same scan runs again in the run's step
(files may change in between) and raises :class:`ImportProblem` there.

Pixel sizes (all import protocols): ``pixel_size_A`` left empty means "use the header"; it is an
error when a header has none (0) or when the files' headers disagree. A given ``pixel_size_A``
is used where a header has 0 (noted in the run log); a header with a *different non-zero* value
is an error unless ``override_header_pixel_size`` is true, in which case the given value wins and
the run log says so. Values agree within a relative tolerance of :data:`PIXEL_RTOL`.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator

from cryostack.core.datamodel import ItemSet, OpticsGroup, SetKind
from cryostack.core.protocol import OutputValue, Params, RunContext, atomic_path, param
from cryostack.io.errors import FormatError
from cryostack.io.mrc import open_mrc_stack
from cryostack.io.tiff import open_tiff_movie

PIXEL_RTOL = 1e-3
"""Relative tolerance when comparing pixel sizes (MRC headers store float32 cell sizes)."""
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".st", ".rec")
TIFF_SUFFIXES = (".tif", ".tiff")


class ImportProblem(ValueError):
    """Input files of an import are missing, unreadable or inconsistent (message names them)."""


def absolute_path(value: str) -> str:
    """``~`` expanded and made absolute against the current folder (patterns keep wildcards)."""
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    return os.path.abspath(os.path.expanduser(text))


AbsolutePath = Annotated[str, AfterValidator(absolute_path)]
"""A path parameter: relative paths are made absolute when the run is created."""


class AcquisitionParams(Params):
    """Microscope values shared by movie and micrograph imports (one optics group)."""

    voltage_kV: float = param(300.0, help="acceleration voltage", unit="kV", gt=0)
    cs_mm: float = param(2.7, help="spherical aberration", unit="mm", ge=0)
    amplitude_contrast: float = param(0.1, help="amplitude contrast Q0", ge=0, lt=1)
    pixel_size_A: float | None = param(
        None,
        help="pixel size; empty: from the file headers (error if they have none)",
        unit="Å/px",
        gt=0,
    )
    override_header_pixel_size: bool = param(
        False,
        help="use pixel_size_A even where a header has a different non-zero value "
        "(otherwise that is an error)",
        group="Advanced",
    )
    optics_group_name: str = param(
        "opticsGroup1", help="name of the optics group", min_length=1, group="Advanced"
    )

    def optics_group(self, pixel_size_A: float, **extra: Any) -> OpticsGroup:
        """The one optics group of an import, with the pixel size in effect."""
        return OpticsGroup(
            optics_group=1,
            name=self.optics_group_name,
            voltage_kV=self.voltage_kV,
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
            pixel_size_A=pixel_size_A,
            **extra,
        )


@dataclass
class Findings:
    """Problems (the import cannot go on) and notes (written to the run log) of a scan."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raise_problems(self) -> None:
        if self.problems:
            raise ImportProblem("; ".join(self.problems))

    def log_notes(self, ctx: RunContext) -> None:
        for note in self.notes:
            ctx.log(f"note: {note}")


def match_files(pattern: str) -> list[Path]:
    """Files matching a glob pattern (``**`` allowed), sorted; ImportProblem when none match."""
    matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matches:
        if any(c in pattern for c in "*?["):
            raise ImportProblem(f"{pattern}: no file matches this pattern")
        raise ImportProblem(f"{pattern}: file not found")
    return matches


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: ``shape`` is (N, H, W) (or (D, H, W) for a volume)."""

    path: Path
    shape: tuple[int, int, int]
    pixel_size_A: float | None
    is_volume: bool = False
    voxel_size_A: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of one image/frame, pixels."""
        return self.shape[1], self.shape[2]


def read_header(path: Path) -> ImageHeader:
    """Header of an MRC or TIFF file without reading its data (MRC is memory-mapped only).

    Raises:
        ImportProblem: missing, not MRC/TIFF, unreadable or truncated (message names the file).
    """
    if not path.exists():
        raise ImportProblem(f"{path}: file not found")
    if not path.is_file():
        raise ImportProblem(f"{path}: not a file")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            with open_tiff_movie(path) as movie:
                return ImageHeader(path, movie.shape, None)
        if suffix == ".eer":
            raise ImportProblem(f"{path}: EER movies are not supported yet (convert to TIFF)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dubious headers: the checks below are explicit
            with open_mrc_stack(path) as stack:
                info = stack.info
                n = len(stack)
                h, w = stack.image_shape
        px = info.header_voxel_size_A[0]
        pixel = float(px) if px > 0 and math.isfinite(px) else None
        voxel = info.header_voxel_size_A
        return ImageHeader(path, (n, h, w), pixel, info.is_volume, voxel)
    except FormatError as err:
        raise ImportProblem(str(err)) from None
    except (OSError, IndexError) as err:
        raise ImportProblem(f"{path}: cannot read: {err}") from None


def scan_headers(paths: Sequence[Path], findings: Findings) -> list[ImageHeader]:
    """Headers of ``paths``; each unreadable file adds a problem (at most 20 reported)."""
    headers: list[ImageHeader] = []
    bad = 0
    for path in paths:
        try:
            headers.append(read_header(path))
        except ImportProblem as err:
            bad += 1
            if bad <= 20:
                findings.problems.append(str(err))
    if bad > 20:
        findings.problems.append(f"... and {bad - 20} more unreadable files")
    return headers


def check_same_image_shape(headers: Sequence[ImageHeader], what: str, findings: Findings) -> None:
    """Every file must have the first file's (H, W): a problem names each one that differs."""
    if not headers:
        return
    first = headers[0]
    odd = [h for h in headers if h.image_shape != first.image_shape]
    for h in odd[:20]:
        findings.problems.append(
            f"{h.path}: {what} size {_hw(h.image_shape)} differs from {_hw(first.image_shape)} "
            f"of {first.path}"
        )
    if len(odd) > 20:
        findings.problems.append(f"... and {len(odd) - 20} more files of another size")


def _hw(shape: tuple[int, int]) -> str:
    return f"{shape[1]}x{shape[0]} px (W x H)"


def same_pixel_size(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=PIXEL_RTOL)


def resolve_pixel_size(
    headers: Sequence[ImageHeader],
    given_A: float | None,
    override: bool,
    findings: Findings,
) -> float | None:
    """The pixel size in effect for files with these headers (see the module docstring).

    Returns None (with a problem added) when it cannot be decided.
    """
    with_size = [h for h in headers if h.pixel_size_A is not None]
    zero = [h for h in headers if h.pixel_size_A is None]
    if given_A is None:
        if zero:
            names = ", ".join(str(h.path) for h in zero[:5]) + (" ..." if len(zero) > 5 else "")
            findings.problems.append(f"{names}: no pixel size in the header; give pixel_size_A")
            return None
        if not with_size:
            return None
        first = with_size[0]
        assert first.pixel_size_A is not None
        for h in with_size:
            assert h.pixel_size_A is not None
            if not same_pixel_size(h.pixel_size_A, first.pixel_size_A):
                findings.problems.append(
                    f"{h.path}: header pixel size {h.pixel_size_A:g} Å differs from "
                    f"{first.pixel_size_A:g} Å of {first.path}; give pixel_size_A"
                )
                return None
        return float(first.pixel_size_A)
    contradicting = [
        h
        for h in with_size
        if h.pixel_size_A is not None and not same_pixel_size(h.pixel_size_A, given_A)
    ]
    for h in contradicting[:20]:
        message = (
            f"{h.path}: header pixel size {h.pixel_size_A:g} Å contradicts "
            f"pixel_size_A = {given_A:g} Å"
        )
        if override:
            findings.notes.append(message + " (override_header_pixel_size: using the given value)")
        else:
            findings.problems.append(
                message + " (fix the value, or set override_header_pixel_size to use it anyway)"
            )
    if zero:
        findings.notes.append(
            f"{len(zero)} file(s) have no pixel size in the header (e.g. {zero[0].path}); "
            f"using {given_A:g} Å"
        )
    if contradicting and not override:
        return None
    return float(given_A)


def check_gain_reference(
    path: str | None, frame_shape: tuple[int, int] | None, findings: Findings
) -> ImageHeader | None:
    """A gain reference must be one image of the movies' frame size (H, W)."""
    if path is None:
        return None
    try:
        header = read_header(Path(path))
    except ImportProblem as err:
        findings.problems.append(f"gain reference {err}")
        return None
    if header.shape[0] != 1:
        findings.problems.append(
            f"{path}: gain reference must be one image, found {header.shape[0]}"
        )
    elif frame_shape is not None and header.image_shape != frame_shape:
        findings.problems.append(
            f"{path}: gain reference is {_hw(header.image_shape)}, but the movie frames are "
            f"{_hw(frame_shape)}"
        )
    return header


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names for files: their stems, or paths below the common folder if needed."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    base = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(base).with_suffix("").as_posix() for p in paths]


def set_path(ctx: RunContext, path: Path | str) -> str:
    """A file path as stored in a set: project-relative inside the project, else absolute."""
    return ctx.relative(Path(path))


def publish_file(source: Path, target: Path) -> None:
    """Copy ``source`` onto ``target`` atomically (temporary file beside it, fsync, rename)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def publish_set(
    ctx: RunContext, step: str, filename: str, kind: SetKind, n_items: int, **meta: Any
) -> OutputValue:
    """Publish the set a step wrote as a run output (an atomic copy into the outputs folder)."""
    target = ctx.output_path(filename)
    publish_file(ctx.step_dir(step) / filename, target)
    return OutputValue(kind, ctx.relative(target), n_items, meta)


def int_array(values: Sequence[int]) -> Any:
    return np.asarray(values, dtype=np.int32)


def optics_note(item_set: ItemSet) -> str:
    groups = ", ".join(f"{g.name} ({g.pixel_size_A:g} Å/px)" for g in item_set.optics)
    return f"{len(item_set)} items, optics: {groups}"
