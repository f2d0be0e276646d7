"""Export a run's output for other programs: RELION STAR, cryoSPARC ``.cs`` or MRC.

- ``star``: any item set (movies, micrographs with their CTF, coordinates, particles, 2D
  classes), RELION 3.1 format. Paths are written relative to the STAR file's folder when the
  files lie below it, absolute otherwise, so RELION run from that folder finds them.
- ``cs``: particle sets (``blob/path`` relative to the file's folder where possible).
- ``mrc``: volumes, masks and other single-map outputs (copied, with half maps or other
  companion files beside the copy as ``<name>_<companion file name>``); particle or 2D class
  sets become one MRC stack of their images in set order.

``out`` may be a file or an existing folder (then the file is named ``run<ID>_<output>.<ext>``).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cryostack.core import db
from cryostack.core.datamodel import FileKind, ItemSet, SetKind
from cryostack.core.project import InputLink, Project, ProjectError
from cryostack.core.protocol import atomic_path
from cryostack.core.sets import read_set
from cryostack.io.cryosparc import write_cs
from cryostack.io.errors import FormatWarning
from cryostack.io.mrc import MrcStackWriter, open_mrc_stack
from cryostack.io.star import write_star

FORMATS = ("star", "cs", "mrc")
PATH_COLUMNS = ("image_path", "micrograph_path", "movie_path")
MAP_TYPES = {k.value for k in FileKind} - {FileKind.FSC_CURVE.value, FileKind.TABLE.value}
IMAGE_SETS = {SetKind.PARTICLES.value, SetKind.CLASSES_2D.value}


class ExportError(ProjectError):
    """An output cannot be exported in the requested format (message says why)."""


def resolve_output(project: Project, ref: str) -> db.RunOutput:
    """The registered output named by ``RUN`` or ``RUN.OUTPUT``."""
    link = InputLink.parse(str(ref))
    return project.output(link.run_id, link.output)


def absolute_paths(item_set: ItemSet, root: Path) -> ItemSet:
    """The set with its file paths (and gain references) absolute (relative ones are below root)."""
    table = item_set.table
    for name in PATH_COLUMNS:
        if name not in table.column_names:
            continue
        column = table.column(name)
        unique = pc.unique(column.drop_null()).to_pylist()
        mapping = {p: p if os.path.isabs(p) else str(root / p) for p in unique}
        old = pa.array(list(mapping), pa.string())
        new = pa.array(list(mapping.values()), pa.string())
        replaced = pc.take(new, pc.index_in(column, value_set=old))
        i = table.column_names.index(name)
        table = table.set_column(i, pa.field(name, pa.string()), replaced)
    optics = [
        g.model_copy(update={"gain_reference_path": str(root / g.gain_reference_path)})
        if g.gain_reference_path and not os.path.isabs(g.gain_reference_path)
        else g
        for g in item_set.optics
    ]
    return ItemSet(item_set.kind, table, optics, dict(item_set.meta))


def _target(out: Path, output: db.RunOutput, extension: str) -> Path:
    out = Path(out)
    if out.is_dir():
        return out / f"run{output.run_id}_{output.name}.{extension}"
    if not out.parent.is_dir():
        raise ExportError(f"{out}: folder {out.parent} does not exist")
    return out


def _with_gain_names(item_set: ItemSet, star_dir: Path) -> ItemSet:
    """Movies: the gain reference as rlnMicrographGainName (relative to the STAR's folder)."""
    extras = {str(k): dict(v) for k, v in item_set.meta.get("relion_optics_extra", {}).items()}
    for g in item_set.optics:
        if g.gain_reference_path:
            rel = os.path.relpath(g.gain_reference_path, star_dir)
            name = g.gain_reference_path if rel.startswith("..") else rel
            extras.setdefault(str(g.optics_group), {})["rlnMicrographGainName"] = name
    meta = {**item_set.meta, "relion_optics_extra": extras} if extras else item_set.meta
    return ItemSet(item_set.kind, item_set.table, item_set.optics, meta)


def export_star(item_set: ItemSet, target: Path) -> Path:
    """Write an item set (absolute paths) as a RELION 3.1 STAR file."""
    if item_set.kind == SetKind.MOVIES:
        item_set = _with_gain_names(item_set, target.parent.absolute())
    write_star(item_set, target)
    return target


def export_image_stack(item_set: ItemSet, target: Path, chunk: int = 256) -> Path:
    """Write the images of a particle/class set, in set order, as one MRC stack."""
    if len(item_set) == 0:
        raise ExportError("the set has no images to export")
    paths = item_set.table.column("image_path").to_pylist()
    indices = item_set.table.column("image_index").to_pylist()
    by_group = item_set.optics_by_id()
    groups = (
        item_set.table.column("optics_group").to_pylist()
        if "optics_group" in item_set.table.column_names
        else [None] * len(paths)
    )
    pixel_sizes = {by_group[g].pixel_size_A for g in groups if g in by_group}
    if len(pixel_sizes) > 1:
        raise ExportError(f"images have several pixel sizes {sorted(pixel_sizes)}: one stack")
    pixel = pixel_sizes.pop() if pixel_sizes else 1.0
    writer: MrcStackWriter | None = None
    try:
        start = 0
        while start < len(paths):
            stop = start
            while stop < len(paths) and stop - start < chunk and paths[stop] == paths[start]:
                stop += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FormatWarning)  # the set gives the pixel size
                with open_mrc_stack(paths[start], pixel_size_A=pixel) as stack:
                    images = stack.read(indices[start:stop])
            if writer is None:
                writer = MrcStackWriter(target, stack.image_shape, pixel)
            writer.write(images)
            start = stop
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    assert writer is not None
    writer.close()
    return target


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def export_map(project: Project, output: db.RunOutput, target: Path) -> Path:
    """Copy a single-map output (and its companion files beside it)."""
    _copy(project.path(output.path), target)
    for companion in output.meta.get("companions", []):
        source = project.path(companion)
        _copy(source, target.with_name(f"{target.stem}_{source.name}"))
    return target


def export_output(project: Project, ref: str, out: Path, fmt: str) -> Path:
    """Export output ``ref`` (``RUN`` or ``RUN.OUTPUT``) of ``project`` to ``out`` as ``fmt``.

    Returns the file written. Raises :class:`ExportError` (a ProjectError: the CLI prints it and
    exits with code 2) for unsupported combinations of output type and format.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    output = resolve_output(project, ref)
    what = f"run {output.run_id}.{output.name} ({output.type})"
    set_types = {k.value for k in SetKind}
    if output.type in set_types:
        item_set = absolute_paths(read_set(project.path(output.path)), project.root)
        target = _target(out, output, fmt)
        if fmt == "star":
            return export_star(item_set, target)
        if output.type not in IMAGE_SETS:
            raise ExportError(f"{what} can be exported as star only (not {fmt})")
        if fmt == "cs":
            if output.type != SetKind.PARTICLES.value:
                raise ExportError(f"{what}: .cs export is for particle sets")
            write_cs(item_set, target)
            return target
        return export_image_stack(item_set, target)
    if output.type in MAP_TYPES:
        if fmt != "mrc":
            raise ExportError(f"{what} is a map: export it as mrc, not {fmt}")
        return export_map(project, output, _target(out, output, "mrc"))
    raise ExportError(f"{what} cannot be exported (supported: item sets, maps)")
