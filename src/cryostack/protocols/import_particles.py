"""Import particles: a RELION STAR (3.0, 3.1 or 5) or cryoSPARC ``.cs`` file and its stacks.

The metadata file is converted by :mod:`cryostack.io.star` / :mod:`cryostack.io.cryosparc`
(optics groups from the file; CTF, poses, shifts, subsets and classes kept). Image paths are
resolved against ``root`` (default: the file's folder). Every referenced stack must exist and be
a readable, complete MRC stack holding the referenced images (headers only are read); images of
one optics group must all have one size, equal to the group's ``rlnImageSize`` when given. The
STAR/.cs file is the authority on pixel size: a stack header that disagrees is noted in the run
log, not an error (real headers are often 0 or wrong). Images stay where they are (absolute
paths) unless ``copy`` is set: then the stacks are copied into the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryostack.core.datamodel import ItemSet, SetKind
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
from cryostack.core.sets import write_set
from cryostack.io.cryosparc import read_cs
from cryostack.io.errors import FormatError
from cryostack.io.star import read_star
from cryostack.protocols._importing import (
    AbsolutePath,
    Findings,
    ImageHeader,
    ImportProblem,
    publish_file,
    publish_set,
    read_header,
    same_pixel_size,
    set_path,
    unique_names,
)

STEP = "scan"
SET_FILE = "particles.cset"
STACKS = "stacks"


class ImportParticlesParams(Params):
    file: AbsolutePath = param(
        ..., help="particle metadata: RELION .star (3.0/3.1/5) or cryoSPARC .cs"
    )
    root: AbsolutePath | None = param(
        None,
        help="folder the file's image paths are relative to (RELION/cryoSPARC project folder); "
        "empty: the file's folder",
    )
    pixel_size_A: float | None = param(
        None,
        help="pixel size for old STAR files that give none (ignored when the file has one)",
        unit="Å/px",
        gt=0,
        group="Advanced",
    )
    copy_stacks: bool = param(
        False, help="copy the image stacks into the run folder (default: refer to them)"
    )


def read_particle_file(params: ImportParticlesParams) -> ItemSet:
    """The particle set described by the STAR/.cs file (paths absolute, not yet checked)."""
    path = Path(params.file)
    if not path.is_file():
        raise ImportProblem(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".cs":
            item_set = read_cs(path, root=params.root)
        elif suffix == ".star":
            item_set = read_star(path, root=params.root, pixel_size_A=params.pixel_size_A)
        else:
            raise ImportProblem(f"{path}: not a .star or .cs file")
    except (FormatError, FileNotFoundError) as err:
        raise ImportProblem(str(err)) from None
    if item_set.kind != SetKind.PARTICLES:
        raise ImportProblem(
            f"{path}: holds {item_set.kind.value.lower()}, not particles (no rlnImageName)"
        )
    if len(item_set) == 0:
        raise ImportProblem(f"{path}: no particles")
    return item_set


def _stack_usage(item_set: ItemSet) -> list[tuple[str, int, int, list[int]]]:
    """Per stack: (path, min index, max index, optics groups using it), in first-use order."""
    table = item_set.table.select(["image_path", "image_index", "optics_group"])
    grouped = table.group_by("image_path", use_threads=False).aggregate(
        [("image_index", "min"), ("image_index", "max"), ("optics_group", "distinct")]
    )
    order = pc.index_in(grouped.column("image_path"), table.column("image_path")).to_numpy()
    rows = grouped.to_pylist()
    return [
        (
            r["image_path"],
            r["image_index_min"],
            r["image_index_max"],
            sorted(r["optics_group_distinct"]),
        )
        for r in (rows[i] for i in np.argsort(order, kind="stable"))
    ]


def _check_stacks(item_set: ItemSet, findings: Findings) -> None:
    """Every stack exists, is complete and holds the referenced images of the right size."""
    groups = item_set.optics_by_id()
    size_of_group: dict[int, tuple[tuple[int, int], str]] = {}
    usage = _stack_usage(item_set)
    missing = [u[0] for u in usage if not Path(u[0]).exists()]
    if missing:
        examples = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        findings.problems.append(
            f"{len(missing)} of {len(usage)} image stack(s) referenced by "
            f"{item_set.meta.get('source', 'the file')} not found: {examples} "
            "(set root to the folder the file's paths are relative to)"
        )
        return
    bad = 0
    for stack, low, high, group_ids in usage:
        if bad >= 20:
            findings.problems.append("... (further stacks not checked)")
            return
        try:
            header: ImageHeader = read_header(Path(stack))
        except ImportProblem as err:
            findings.problems.append(f"image stack {err}")
            bad += 1
            continue
        n = header.shape[0]
        if low < 0 or high >= n:
            findings.problems.append(
                f"{stack}: has {n} images, but image {high + 1} (1-based) is referenced"
            )
            bad += 1
        for gid in group_ids:
            group = groups.get(gid)
            if group is None:
                continue
            if group.image_size_px is not None and header.image_shape != (
                group.image_size_px,
                group.image_size_px,
            ):
                findings.problems.append(
                    f"{stack}: images are {header.shape[2]}x{header.shape[1]} px but optics "
                    f"group {group.name} says {group.image_size_px} px"
                )
                bad += 1
            seen = size_of_group.setdefault(gid, (header.image_shape, stack))
            if seen[0] != header.image_shape:
                findings.problems.append(
                    f"{stack}: images are {header.shape[2]}x{header.shape[1]} px, but {seen[1]} "
                    f"of the same optics group has {seen[0][1]}x{seen[0][0]} px"
                )
                bad += 1
            if header.pixel_size_A is not None and not same_pixel_size(
                header.pixel_size_A, group.pixel_size_A
            ):
                findings.notes.append(
                    f"{stack}: header pixel size {header.pixel_size_A:g} Å differs from "
                    f"{group.pixel_size_A:g} Å of the particle file (using the file's)"
                )


def scan_particles(params: ImportParticlesParams) -> tuple[ItemSet | None, Findings]:
    """The particle set and what is wrong with it or its stacks."""
    findings = Findings()
    try:
        item_set = read_particle_file(params)
    except ImportProblem as err:
        findings.problems.append(str(err))
        return None, findings
    _check_stacks(item_set, findings)
    return item_set, findings


def _with_paths(item_set: ItemSet, mapping: dict[str, str]) -> ItemSet:
    column = item_set.table.column("image_path")
    old = pa.array(list(mapping), pa.string())
    new = pa.array(list(mapping.values()), pa.string())
    replaced = pc.take(new, pc.index_in(column, value_set=old))
    i = item_set.table.column_names.index("image_path")
    table = item_set.table.set_column(i, pa.field("image_path", pa.string()), replaced)
    return ItemSet(item_set.kind, table, item_set.optics, item_set.meta)


class ImportParticles(Protocol):
    id = "import-particles"
    name = "Import particles"
    category = "Import"
    help = (
        "Import particles from a RELION STAR file (3.0, 3.1 or 5) or a cryoSPARC .cs file, with "
        "their optics groups, CTF and poses; checks that every image stack exists and holds the "
        "referenced images."
    )
    Params = ImportParticlesParams
    outputs = {"particles": OutputSpec(SetKind.PARTICLES, "the particles")}

    def check(self, ctx: RunContext) -> list[str]:
        assert isinstance(ctx.params, ImportParticlesParams)
        return scan_particles(ctx.params)[1].problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        return [StepSpec(key=STEP)]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        params = ctx.params
        assert isinstance(params, ImportParticlesParams)
        item_set, findings = scan_particles(params)
        findings.raise_problems()
        findings.log_notes(ctx)
        assert item_set is not None
        stacks = [Path(s) for s, *_ in _stack_usage(item_set)]
        if params.copy_stacks:
            folder = ctx.work_dir / STACKS
            folder.mkdir()
            final = ctx.step_dir(STEP) / STACKS
            mapping = {}
            for stack, name in zip(stacks, unique_names(stacks), strict=True):
                filename = name.replace("/", "_") + stack.suffix
                publish_file(stack, folder / filename)
                mapping[str(stack)] = set_path(ctx, final / filename)
            ctx.log(f"copied {len(stacks)} stacks into {set_path(ctx, final)}")
        else:
            mapping = {str(s): set_path(ctx, s) for s in stacks}
        item_set = _with_paths(item_set, mapping)
        item_set.meta = {**item_set.meta, "source": params.file}
        write_set(item_set, ctx.work_dir / SET_FILE)
        groups = ", ".join(f"{g.name} ({g.pixel_size_A:g} Å/px)" for g in item_set.optics)
        ctx.log(f"{len(item_set)} particles in {len(stacks)} stacks; optics groups: {groups}")
        return {"n_particles": len(item_set), "n_stacks": len(stacks)}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        n = int(results[STEP]["n_particles"])
        return {"particles": publish_set(ctx, STEP, SET_FILE, SetKind.PARTICLES, n)}
