"""A small Python API for notebooks: open a project, list runs, read sets, images and maps.

Outputs are named like on the command line: ``"RUN"`` (the run's main output) or
``"RUN.OUTPUT"``; an int run id works too. Example::

    import cryostack.api as cs

    project = cs.open_project("my-project")
    cs.runs(project)                                  # DataFrame of runs
    particles = cs.read_set_df(project, "3.particles")
    images = cs.read_images(project, "3.particles", [0, 1, 2])   # (3, H, W) float32
    volume, pixel_size_A = cs.read_volume(project, 7)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from cryostack.core import db
from cryostack.core.datamodel import FileKind, ItemSet, SetKind
from cryostack.core.project import InputLink, Project, ProjectError
from cryostack.core.sets import read_set as _read_set_file
from cryostack.io.errors import FormatWarning
from cryostack.io.mrc import open_mrc_stack, read_mrc

Ref = str | int
IMAGE_SETS = (SetKind.PARTICLES.value, SetKind.CLASSES_2D.value)
MAP_TYPES = (FileKind.VOLUME.value, FileKind.MASK.value, FileKind.LOCAL_RESOLUTION.value)

__all__ = [
    "open_project",
    "output",
    "read_images",
    "read_item_set",
    "read_set",
    "read_set_df",
    "read_volume",
    "runs",
]


def open_project(path: str | os.PathLike[str]) -> Project:
    """Open an existing project folder."""
    return Project.open(Path(path))


def output(project: Project, ref: Ref) -> db.RunOutput:
    """The registered output named by ``RUN`` / ``RUN.OUTPUT`` (or an int run id)."""
    link = InputLink.parse(str(ref))
    return project.output(link.run_id, link.output)


def runs(project: Project) -> pd.DataFrame:
    """One row per run: id, protocol, status, label, times, steps, inputs and outputs."""
    rows = []
    for run in project.runs():
        rows.append(
            {
                "id": run.id,
                "protocol": run.protocol,
                "status": run.status,
                "label": run.label,
                "created_at": run.created_at,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "n_steps": run.n_steps,
                "inputs": ", ".join(
                    f"{e.name}={e.source_run_id}.{e.source_output}"
                    for e in sorted(run.inputs, key=lambda e: (e.name, e.position))
                ),
                "outputs": ", ".join(f"{o.name}:{o.type}" for o in run.outputs),
                "error": run.error,
            }
        )
    columns = [
        "id",
        "protocol",
        "status",
        "label",
        "created_at",
        "started_at",
        "finished_at",
        "n_steps",
        "inputs",
        "outputs",
        "error",
    ]
    return pd.DataFrame(rows, columns=columns)


def read_item_set(project: Project, ref: Ref) -> ItemSet:
    """An output item set (table, optics groups, meta); paths in it are project-relative."""
    out = output(project, ref)
    if out.type not in {k.value for k in SetKind}:
        raise ProjectError(f"run {out.run_id}.{out.name} is a {out.type}, not an item set")
    return _read_set_file(project.path(out.path))


def read_set(project: Project, ref: Ref) -> pa.Table:
    """The table of an output item set (memory-mapped; one row per item)."""
    return read_item_set(project, ref).table


def read_set_df(project: Project, ref: Ref) -> pd.DataFrame:
    """The table of an output item set as a pandas DataFrame."""
    return read_set(project, ref).to_pandas()


def _absolute(project: Project, path: str) -> str:
    return path if os.path.isabs(path) else str(project.root / path)


def _row_indices(indices: Sequence[int] | npt.ArrayLike, n: int) -> np.ndarray:
    rows = np.asarray(indices, dtype=np.int64).reshape(-1)
    bad = rows[(rows < 0) | (rows >= n)]
    if bad.size:
        raise IndexError(f"row {int(bad[0])} out of range for a set of {n} items")
    return rows


def read_images(project: Project, ref: Ref, indices: Sequence[int] | npt.ArrayLike) -> np.ndarray:
    """Images of rows ``indices`` (0-based rows of the set) of a particle, class or micrograph set.

    Returns ``(n, H, W)`` float32 in the order of ``indices``; stacks are memory-mapped, so only
    the requested images are read. Micrographs must all have the same size.
    """
    item_set = read_item_set(project, ref)
    table = item_set.table
    rows = _row_indices(indices, table.num_rows)
    if item_set.kind.value in IMAGE_SETS:
        paths = table.column("image_path").take(pa.array(rows)).to_pylist()
        index = table.column("image_index").take(pa.array(rows)).to_numpy()
    elif item_set.kind == SetKind.MICROGRAPHS:
        paths = table.column("micrograph_path").take(pa.array(rows)).to_pylist()
        index = np.zeros(len(rows), dtype=np.int64)
    else:
        raise ProjectError(f"{ref}: a {item_set.kind.value} has no images to read")
    out: np.ndarray | None = None
    for stack_path in dict.fromkeys(paths):
        where = np.flatnonzero(np.asarray(paths, dtype=object) == stack_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FormatWarning)  # pixel size comes from the set
            with open_mrc_stack(_absolute(project, stack_path)) as stack:
                images = stack.read(index[where])
        if out is None:
            out = np.empty((len(rows), *images.shape[1:]), dtype=images.dtype)
        elif images.shape[1:] != out.shape[1:]:
            raise ProjectError(
                f"{stack_path}: images are {images.shape[1:]}, others {out.shape[1:]}"
            )
        out[where] = images
    if out is None:
        return np.empty((0, 0, 0), dtype=np.float32)
    return out


def read_volume(project: Project, ref: Ref) -> tuple[np.ndarray, float]:
    """A map output (volume, mask, local resolution): ``((D, H, W) float32, pixel size in Å)``."""
    out = output(project, ref)
    if out.type not in MAP_TYPES:
        raise ProjectError(f"run {out.run_id}.{out.name} is a {out.type}, not a map")
    given = out.meta.get("pixel_size_A")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FormatWarning)
        data, info = read_mrc(project.path(out.path), pixel_size_A=given)
    if info.pixel_size_A is None:
        raise ProjectError(f"{out.path}: map has no pixel size")
    return data, float(info.pixel_size_A)
